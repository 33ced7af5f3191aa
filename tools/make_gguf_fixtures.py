#!/usr/bin/env python3
"""GGUF fixtures: fixture checkpoints converted and quantized by llama.cpp's own tools, and the
logits llama.cpp computes on them (the peer to compare with).

    python tools/make_gguf_fixtures.py                # every file of FILES
    python tools/make_gguf_fixtures.py moe256-Q4_K_M  # some of them

Each file of FILES is made from tests/fixtures/<case>/hf with llama.cpp's converter (bf16) and
llama-quantize (`../shared/peer/llamacpp_tools.py`, which builds them from the package registry
on first use), then run by llama-cpp-python (the venv of `../shared/peer/llamacpp_bench.py`) on
the fixture's prompts, one thread, every position's logits.  Written to tests/fixtures/gguf/:

    <name>.gguf            the file
    <name>.llama.npz       llama.cpp's logits on it: logits_i float16 [T, V] per prompt i of
                           the case's reference.npz (float16 keeps the fixtures small; its
                           rounding, ~1e-3 of a logit, is far below the errors compared)
    llamacpp.json          how they were made: llama-cpp-python version, types, tensor types

Tests never build llama.cpp: they read what this wrote.  The bf16 conversions in between go to
a temporary folder under $MOECC_SCRATCH (default: the system's); $MOECC_PEER_TOOLS names the
folder of llamacpp_tools.py if it is not ../shared/peer beside the checkout.  moe256's
checkpoint is not committed: make it first with `python tools/make_fixtures.py moe256`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
OUT = FIXTURES / "gguf"
PEER = Path(os.environ.get("MOECC_PEER_TOOLS", ROOT.parent / "shared" / "peer"))  # llamacpp_tools.py's folder
sys.path.insert(0, str(PEER))
import llamacpp_tools as peer_tools  # noqa: E402

# name -> (fixture case, llama-quantize type, --pure).  moe256's widths are multiples of 256
# (llama.cpp's K types apply everywhere); gqa16's hidden width 32 is not, so its K-type files
# fall back to Q5_0 / Q5_1 / Q8_0 where a row is 32 wide (and keep K types for attn_output, 8192).
FILES = {
    "gqa16-BF16": ("gqa16", "BF16", False),
    "moe256-Q8_0": ("moe256", "Q8_0", False),
    "moe256-Q4_0-pure": ("moe256", "Q4_0", True),
    "moe256-Q4_K_M": ("moe256", "Q4_K_M", False),  # Q4_K, and Q6_K for output, attn_v / ffn_down_exps of layer 1
    "gqa16-Q4_K_M": ("gqa16", "Q4_K_M", False),  # Q5_0 and Q8_0 fallbacks, Q4_K for attn_output
    "gqa16-Q5_K_M": ("gqa16", "Q5_K_M", False),  # Q5_1 and Q8_0 fallbacks, Q5_K for attn_output
    "gqa16-Q4_1-pure": ("gqa16", "Q4_1", True),
}

LOGITS = r"""
import json, sys
import numpy as np
import llama_cpp
path, ids_path, out = sys.argv[1:4]
prompts = json.load(open(ids_path))
llm = llama_cpp.Llama(model_path=path, n_ctx=max(len(p) for p in prompts) + 8, n_batch=512, n_threads=1,
                      n_threads_batch=1, logits_all=True, embedding=False, verbose=False)
arrays = {}
for i, ids in enumerate(prompts):
    llm.reset()
    llm.eval(ids)
    arrays[f"logits_{i}"] = np.array(llm.scores[:len(ids)], np.float32).astype(np.float16)
np.savez_compressed(out, **arrays)
print(llama_cpp.__version__)
"""


def prompts_of(case: str) -> list[list[int]]:
    with np.load(FIXTURES / case / "reference.npz") as z:
        n = sum(1 for k in z.files if k.startswith("ids_"))
        return [z[f"ids_{i}"].tolist() for i in range(n)]


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each ggml type the file holds."""
    import gguf
    counts: dict[str, int] = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return dict(sorted(counts.items()))


def make(name: str, work: Path) -> dict:
    case, qtype, pure = FILES[name]
    hf_dir = FIXTURES / case / "hf"
    base = work / f"{case}-bf16.gguf"
    if not base.exists():
        peer_tools.bf16_gguf(str(hf_dir), str(base))
    out = OUT / f"{name}.gguf"
    if qtype == "BF16":
        out.write_bytes(base.read_bytes())
    else:
        cmd = [peer_tools.program("llama-quantize")] + (["--pure"] if pure else []) + [str(base), str(out), qtype]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ids_path = work / f"{case}-ids.json"
    ids_path.write_text(json.dumps(prompts_of(case)))
    peer_python = peer_tools.peer.VPY
    version = subprocess.run([peer_python, "-c", LOGITS, str(out), str(ids_path), str(OUT / f"{name}.llama.npz")],
                             check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return {"case": case, "llama_quantize_type": qtype, "pure": pure, "bytes": out.stat().st_size,
            "tensor_types": tensor_types(out), "llama_cpp_python": version}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", help=f"files to (re)make, default all: {', '.join(FILES)}")
    args = ap.parse_args()
    unknown = [n for n in args.names if n not in FILES]
    if unknown:
        ap.error(f"unknown file(s) {', '.join(unknown)}; choose from {', '.join(FILES)}")
    OUT.mkdir(parents=True, exist_ok=True)
    manifest_path = OUT / "llamacpp.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("MOECC_SCRATCH")) as work:
        for name in args.names or FILES:
            manifest[name] = make(name, Path(work))
            print(name, manifest[name], flush=True)
    manifest = {name: manifest[name] for name in FILES if name in manifest}
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
