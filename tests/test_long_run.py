"""A long generation keeps resident memory flat and ends cleanly at the context limit."""
import os

import pytest

import moecc
from moecc.generate import DEMO_MODEL


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_5000_tokens_with_flat_memory():
    with pytest.warns(UserWarning, match="longer than the model was trained for"):
        model = moecc.load(DEMO_MODEL, threads=2, ctx=8192)  # the demo was trained on 256 positions
    model.eos_token_ids = frozenset()  # keep going past any end of text
    rss = {}
    count = 0
    for step in model.generate("Once upon a time", max_tokens=6000, temperature=1.0, seed=0):
        count += 1
        if count in (1000, 6000):
            rss[count] = _rss_bytes()
    assert count == 6000 and step.finish_reason == "length"
    growth = rss[6000] - rss[1000]
    assert growth < 4 << 20, f"resident memory grew by {growth / 2**20:.1f} MiB over 5000 tokens"


def test_generation_ends_at_the_context_limit():
    model = moecc.load(DEMO_MODEL, threads=1, ctx=200)
    model.eos_token_ids = frozenset()
    steps = list(model.generate("Once upon a time", max_tokens=1000, temperature=1.0, seed=1))
    assert steps[-1].finish_reason == "context"
    assert len(steps) + len(model.tokenizer.encode("Once upon a time")) == 201
