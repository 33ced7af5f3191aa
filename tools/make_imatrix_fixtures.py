#!/usr/bin/env python3
"""Importance-matrix fixtures: llama.cpp's llama-imatrix run on a GGUF fixture, in both of its
formats, for tests/test_imatrix.py to read (and to compare with moecc-imatrix on the same file).

    python tools/make_imatrix_fixtures.py

llama-imatrix (built by `../shared/peer/llamacpp_tools.py` on first use; $MOECC_PEER_TOOLS names
its folder otherwise) runs tests/fixtures/gguf/gqa16-BF16.gguf (llama.cpp's own bf16 conversion
of the gqa16 fixture) over tests/data/stdlib_held_out.txt with -c 512 (6 windows), one thread,
from the repository's root (the files name the text as tests/data/stdlib_held_out.txt), into
tests/fixtures/gguf/gqa16-stdlib.imatrix.gguf (its default GGUF format) and
gqa16-stdlib.imatrix.dat (--output-format dat, the legacy one).  Tests never run llama.cpp.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEER = Path(os.environ.get("MOECC_PEER_TOOLS", ROOT.parent / "shared" / "peer"))  # llamacpp_tools.py's folder
sys.path.insert(0, str(PEER))
import llamacpp_tools as peer_tools  # noqa: E402

MODEL = "tests/fixtures/gguf/gqa16-BF16.gguf"
TEXT = "tests/data/stdlib_held_out.txt"
OUT = "tests/fixtures/gguf/gqa16-stdlib.imatrix"


def main() -> None:
    for fmt in ("gguf", "dat"):
        cmd = [peer_tools.program("llama-imatrix"), "-m", MODEL, "-f", TEXT, "-o", f"{OUT}.{fmt}",
               "--output-format", fmt, "-c", "512", "-t", "1"]
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"{OUT}.{fmt}: {(ROOT / f'{OUT}.{fmt}').stat().st_size} bytes")


if __name__ == "__main__":
    main()
