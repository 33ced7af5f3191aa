"""Make the bundled demo model, src/moecc/demo/demo.moecc, from a checkpoint train_tiny.py trained.

    /work/venv-torch/bin/python tools/train_tiny.py --size demo -o /work/scratch/quality/demo
    python tools/make_demo.py /work/scratch/quality/demo

The demo is that small Qwen3-MoE model, trained on the Python standard library's sources,
converted to bf16: it lets `python -m moecc.generate` run with no download and print
code-like text.
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

from moecc.convert import convert  # noqa: E402

if __name__ == "__main__":
    p = argparse.ArgumentParser(description="Convert the trained demo checkpoint into src/moecc/demo/demo.moecc.")
    p.add_argument("checkpoint", help="the folder train_tiny.py --size demo wrote")
    args = p.parse_args()
    out = os.path.join(HERE, "..", "src", "moecc", "demo", "demo.moecc")
    stats = convert(args.checkpoint, out, "bf16", force=True)
    print(f"wrote {out}: {stats['output_bytes'] / 1e6:.1f} MB")
