"""The text every machine has: the Python standard library's sources, split by file into
training and held-out text (tools/train_tiny.py trains on the first; benchmarks/quality_yardstick.py
calibrates importance matrices on it and scores on the second).

A file is held out when zlib.crc32 of its path relative to the stdlib directory (with "/"
separators) is 0 mod 10 -- about a tenth of the files, the same ones on every machine with the
same Python.  Site-packages and the test suites (directories test, tests, idle_test) are left
out, and so are the few files that are not UTF-8.  No torch, no moecc: plain Python.
"""
from __future__ import annotations

import sysconfig
import zlib
from pathlib import Path

EXCLUDED_DIRS = {"site-packages", "test", "tests", "idle_test"}
HELD_OUT_MOD = 10  # a file is held out when crc32(relative path) % HELD_OUT_MOD == 0


def corpus_files(stdlib: Path | None = None) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, held_out): (relative path, text) of every stdlib source file, sorted by path."""
    stdlib = Path(sysconfig.get_paths()["stdlib"]) if stdlib is None else stdlib
    train, held_out = [], []
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib).as_posix()
        if EXCLUDED_DIRS & set(rel.split("/")[:-1]):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        (held_out if zlib.crc32(rel.encode()) % HELD_OUT_MOD == 0 else train).append((rel, text))
    return train, held_out


def joined(files: list[tuple[str, str]], chars: int) -> str:
    """The files' texts joined by blank lines, cut at `chars` characters."""
    return "\n\n".join(text for _, text in files)[:chars]
