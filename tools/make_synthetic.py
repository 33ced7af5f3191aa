"""Write a random-weight Hugging Face checkpoint with Qwen3-30B-A3B's geometry, for benchmarks.

    python tools/make_synthetic.py --layers 8 --out /work/scratch/syn8

The same as `python -m moecc.synthetic`; the logic is the moecc.synthetic package (so
`moecc-bench --layers N` can make one too); see its docstring.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from moecc.synthetic.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
