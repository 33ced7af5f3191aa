"""The machine's memory read bandwidth, the ceiling for decode speed.

    python benchmarks/bandwidth.py --threads 2 --gib 2

Streams a buffer far larger than the caches (default 2 GiB) through the widest vector loads
the CPU has (bandwidth.c: AVX-512 / AVX2 / 64-bit, chosen from cpuid), one contiguous slice
per OpenMP thread, and reports the best of a few passes in GB/s (10^9 bytes per second).  The
C file is compiled on first use with `cc -O3 -fopenmp -shared` into a cache folder in /tmp
(named by a hash of the source) and called through ctypes; nothing here is part of the moecc
package.  `MOECC_BW_ISA=avx2|scalar` forces a narrower load.

On this kind of machine (a 2-core cloud VM) the figure swings between about 25 and 50 GB/s
from minute to minute: measure it in the same run as the thing it is compared with.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "bandwidth.c")
_lib = None


def _compile() -> str:
    """Path of the compiled helper, building it if this source has not been built yet."""
    with open(SOURCE, "rb") as f:
        digest = hashlib.sha1(f.read()).hexdigest()[:12]
    cc = os.environ.get("CC", "cc")
    folder = os.path.join(tempfile.gettempdir(), f"moecc-bandwidth-{os.getuid()}")
    os.makedirs(folder, exist_ok=True)
    lib = os.path.join(folder, f"bandwidth-{digest}.so")
    if os.path.exists(lib):
        return lib
    tmp = f"{lib}.{os.getpid()}.tmp"
    base = [cc, "-O3", "-shared", "-fPIC", SOURCE, "-o", tmp]
    r = subprocess.run(base[:2] + ["-fopenmp"] + base[2:], check=False, capture_output=True, text=True)
    if r.returncode != 0:  # no OpenMP: one thread only, and say so
        print("bandwidth: cc -fopenmp failed; building single-threaded:\n" + r.stderr[-500:], file=sys.stderr)
        r = subprocess.run(base, check=False, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"could not compile {SOURCE}:\n{r.stderr[-2000:]}")
    os.replace(tmp, lib)
    return lib


def _load():
    global _lib
    if _lib is None:
        lib = ctypes.CDLL(_compile())
        lib.bw_alloc.restype = ctypes.c_void_p
        lib.bw_alloc.argtypes = [ctypes.c_size_t, ctypes.c_int]
        lib.bw_free.argtypes = [ctypes.c_void_p]
        lib.bw_read.restype = ctypes.c_uint64
        lib.bw_read.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        lib.bw_load_bits.restype = ctypes.c_int
        lib.bw_openmp.restype = ctypes.c_int
        _lib = lib
    return _lib


def read_bandwidth(threads: int = 2, gib: float = 2.0, passes: int = 5) -> dict:
    """Best-of-`passes` read bandwidth over a `gib` GiB buffer with `threads` threads.
    Returns {"gb_s": best, "passes_gb_s": [...], "threads", "bytes", "load_bits", "openmp"}."""
    lib = _load()
    if gib < 1:
        raise ValueError("use a buffer of at least 1 GiB, far past the last-level cache")
    nbytes = int(gib * (1 << 30)) // 512 * 512
    buf = lib.bw_alloc(nbytes, threads)
    if not buf:
        raise MemoryError(f"could not allocate {nbytes} bytes")
    try:
        lib.bw_read(buf, nbytes, threads)  # warm-up: TLB, thread start-up
        rates = []
        for _ in range(passes):
            t = time.perf_counter()
            lib.bw_read(buf, nbytes, threads)
            rates.append(nbytes / (time.perf_counter() - t) / 1e9)
    finally:
        lib.bw_free(buf)
    return {"gb_s": max(rates), "passes_gb_s": [round(r, 2) for r in rates], "threads": threads,
            "bytes": nbytes, "load_bits": lib.bw_load_bits(), "openmp": bool(lib.bw_openmp())}


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--gib", type=float, default=2.0, help="buffer size in GiB (at least 1); default 2")
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    a = ap.parse_args(argv)
    r = read_bandwidth(a.threads, a.gib, a.passes)
    if a.json:
        print(json.dumps(r))
    else:
        print(f"read bandwidth: {r['gb_s']:.1f} GB/s best of {len(r['passes_gb_s'])} "
              f"({', '.join(f'{x:.1f}' for x in r['passes_gb_s'])}), {r['threads']} threads, "
              f"{r['bytes'] / 2**30:.1f} GiB buffer, {r['load_bits']}-bit loads"
              + ("" if r["openmp"] else ", no OpenMP"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
