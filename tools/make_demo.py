"""Make the bundled demo model, src/moecc/demo/demo.moecc, from the `main` test fixture.

    python tools/make_demo.py

The demo is that tiny random-weight Qwen3-MoE checkpoint (made by tools/make_fixtures.py with
transformers) converted to bf16: it lets `python -m moecc.generate` run with no download.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

from moecc.convert import convert  # noqa: E402

if __name__ == "__main__":
    source = os.path.join(HERE, "..", "tests", "fixtures", "main", "hf")
    out = os.path.join(HERE, "..", "src", "moecc", "demo", "demo.moecc")
    stats = convert(source, out, "bf16", force=True)
    print(f"wrote {out}: {stats['output_bytes'] / 1e6:.1f} MB")
