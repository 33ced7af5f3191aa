"""The command line of moecc.synthetic: python -m moecc.synthetic (or tools/make_synthetic.py)."""
from __future__ import annotations

import argparse
import sys
import time

from .checkpoint import make_checkpoint
from .gguf_file import MIXES, write_gguf_model
from .quantized import QUANTIZED, write_quantized_model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m moecc.synthetic",
        description="Write a random-weight Hugging Face checkpoint with Qwen3-30B-A3B's geometry "
                    "(8 layers: about 11 GB) for benchmarks; moecc-convert and llama.cpp both read it. "
                    "With --quant q4 / q8, write a quantized .moecc file directly instead (48 layers "
                    "at q4: about 17 GB), with no checkpoint; with --gguf Q4_K_M / Q8_0, a GGUF file "
                    "in that llama-quantize type mix, which llama.cpp reads too.")
    ap.add_argument("--out", required=True, help="folder to write (created; its old shards are replaced), "
                                                 "or with --quant the .moecc file")
    ap.add_argument("--layers", type=int, default=8, help="decoder layers (the real model has 48); default 8")
    ap.add_argument("--vocab", type=int, default=None, help="vocab_size (default 151936, the real one)")
    ap.add_argument("--seed", type=int, default=0)
    kind = ap.add_mutually_exclusive_group()
    kind.add_argument("--quant", choices=QUANTIZED, default=None,
                      help="write a .moecc file of this storage type from random quantized data")
    kind.add_argument("--gguf", choices=MIXES, default=None,
                      help="write a GGUF file of this llama-quantize type mix from random quantized blocks")
    ap.add_argument("--shard-gb", type=float, default=4.0, help="shard size limit in GiB; default 4")
    ap.add_argument("--threads", type=int, default=2, help="generator threads; default 2")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)
    started = time.perf_counter()
    if a.gguf:
        stats = write_gguf_model(a.out, layers=a.layers, mix=a.gguf, seed=a.seed, vocab_size=a.vocab)
        what = f"in one {a.gguf} GGUF file"
    elif a.quant:
        stats = write_quantized_model(a.out, layers=a.layers, quant=a.quant, seed=a.seed, vocab_size=a.vocab,
                                      progress=not a.quiet)
        what = "in one .moecc file"
    else:
        stats = make_checkpoint(a.out, layers=a.layers, vocab_size=a.vocab, seed=a.seed,
                                shard_bytes=int(a.shard_gb * (1 << 30)), threads=a.threads, progress=not a.quiet)
        what = f"of weights in {stats['shards']} shards"
    seconds = time.perf_counter() - started
    print(f"wrote {a.out}: {stats['bytes'] / 1e9:.2f} GB {what}, "
          f"{seconds:.0f} s ({stats['bytes'] / 1e6 / seconds:.0f} MB/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
