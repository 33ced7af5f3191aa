"""The machine's memory read bandwidth, the ceiling for decode speed (what moecc-bench divides by).

    python -m moecc.bandwidth --threads 2

Streams a buffer far larger than the caches (2 GiB) the way decode streams weights: each
thread its own contiguous slice, with vector loads as wide as the active ISA's
(moecc._kernels.read_bandwidth, bandwidth.c; MOECC_ISA=avx2|generic narrows them), and
reports the best of a few passes in GB/s (10^9 bytes per second).

On this kind of machine (a 2-core cloud VM) the figure swings between about 25 and 50 GB/s
from minute to minute: measure it in the same run as the thing it is compared with.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import _kernels

DEFAULT_BYTES = 2 << 30  # far past any last-level cache, so what is timed is memory


def measure(threads: int, nbytes: int = DEFAULT_BYTES, passes: int = 5) -> dict:
    """Best-of-`passes` read bandwidth over a buffer of `nbytes` (rounded down to whole steps of
    the kernel) with `threads` threads; a buffer that fits in the caches measures them instead.
    Returns {"gb_s": the best pass, "passes_gb_s": [...], "threads", "bytes", "load_bits", "openmp"}."""
    step = _kernels.bandwidth_step()
    nbytes = nbytes // step * step
    rates = _kernels.read_bandwidth(nbytes, passes=passes, threads=threads) / 1e9
    return {"gb_s": float(rates.max()), "passes_gb_s": [round(float(r), 2) for r in rates], "threads": threads,
            "bytes": nbytes, "load_bits": _kernels.bandwidth_load_bits(),
            "openmp": _kernels.build_info()["openmp"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m moecc.bandwidth", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="default: all CPUs")
    ap.add_argument("--gib", type=float, default=DEFAULT_BYTES / (1 << 30), help="buffer size in GiB; default 2")
    ap.add_argument("--passes", type=int, default=5, help="timed passes, the best reported; default 5")
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    a = ap.parse_args(argv)
    r = measure(a.threads, int(a.gib * (1 << 30)), a.passes)
    if a.json:
        print(json.dumps(r))
    else:
        print(f"read bandwidth: {r['gb_s']:.1f} GB/s best of {len(r['passes_gb_s'])} "
              f"({', '.join(f'{x:.1f}' for x in r['passes_gb_s'])}), {r['threads']} threads, "
              f"{r['bytes'] / 2**30:.2f} GiB buffer, {r['load_bits']}-bit loads"
              + ("" if r["openmp"] else ", no OpenMP (one thread)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
