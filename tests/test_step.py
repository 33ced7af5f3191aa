"""The forward step (forward.c): rows of different sequences in one step each get the logits they
get alone, on every ISA; the f16 cache holds what NumPy's rounding gives; the profile adds up."""
import numpy as np
import pytest

import moecc
from moecc.model import PREFILL_CHUNK, BLOCKS, Buffers, KVCache, Transformer

TOLERANCE = 1e-5  # relative to the logits' scale: float32 rounding in a different order


def _network(model, slots: int, kv_cache: str = "f32") -> Transformer:
    cfg = model.config
    return Transformer(cfg, model.source.weights, Buffers(cfg, PREFILL_CHUNK), KVCache(cfg, slots, model.ctx, kv_cache),
                       model.threads)


def _run(net, tokens, slots, positions, logit_rows):
    logits = np.empty((len(logit_rows), net.cfg.vocab_size), np.float32)
    net.forward(np.asarray(tokens, np.int32), np.asarray(slots, np.int32), np.asarray(positions, np.int32),
                np.asarray(logit_rows, np.int32), logits)
    return logits


@pytest.mark.parametrize("quant", ["f32", "q8", "q4"])
def test_a_mixed_batch_gives_each_row_its_own_logits(isa, converted, quant):
    model = moecc.load(converted("main", quant), threads=2, ctx=128, kv_cache="f32")
    rng = np.random.default_rng(5)
    prompts = [rng.integers(0, model.config.vocab_size, n).tolist() for n in (9, 30, 2)]
    alone = [model.logits(p) for p in prompts]  # every position of each sequence, run alone
    net = _network(model, slots=3)
    # each sequence's prompt but its last tokens into its own slot, one step per sequence
    held_back = (1, 3, 1)
    for slot, (p, n) in enumerate(zip(prompts, held_back)):
        _run(net, p[:-n], [slot] * (len(p) - n), range(len(p) - n), [])
    # one step: the held-back tokens of all three, interleaved, at their own positions
    rows = [(slot, pos) for slot, (p, n) in enumerate(zip(prompts, held_back)) for pos in range(len(p) - n, len(p))]
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    got = _run(net, [prompts[s][p] for s, p in rows], [s for s, _ in rows], [p for _, p in rows], range(len(rows)))
    for row, (slot, pos) in enumerate(rows):
        expected = alone[slot][pos]
        err = np.abs(got[row] - expected).max() / np.abs(expected).max()
        assert err <= TOLERANCE, f"{isa} {quant}: slot {slot} position {pos}: {err:.2e}"


def test_f16_cache_holds_numpys_rounding(converted):
    """The first layer's keys do not depend on the cache's type: the f16 cache holds exactly the
    f32 cache's values rounded as NumPy rounds them."""
    model = moecc.load(converted("main", "f32"), threads=2, ctx=64)
    prompt = list(range(40))
    f32, f16 = _network(model, 1, "f32"), _network(model, 1, "f16")
    for net in (f32, f16):
        _run(net, prompt, [0] * len(prompt), range(len(prompt)), [])
    n = len(prompt)
    np.testing.assert_array_equal(f16.cache.k[0, 0, :, :n], f32.cache.k[0, 0, :, :n].astype(np.float16))
    np.testing.assert_array_equal(f16.cache.v[0, 0, :, :n], f32.cache.v[0, 0, :, :n].astype(np.float16))


def test_step_refuses_rows_out_of_range(converted):
    model = moecc.load(converted("main", "f32"), threads=1, ctx=32)
    net = _network(model, 2)
    V = model.config.vocab_size
    for tokens, slots, positions, match in [([V], [0], [0], rf"tokens\[0\] = {V} is outside \[0, {V}\)"),
                                            ([1, 1], [0, 2], [0, 1], r"slots\[1\] = 2 is outside \[0, 2\)"),
                                            ([1], [0], [32], r"positions\[0\] = 32 is outside \[0, 32\)"),
                                            ([1], [-1], [0], r"slots\[0\] = -1")]:
        with pytest.raises(ValueError, match=match):
            _run(net, tokens, slots, positions, [0])
    with pytest.raises(ValueError, match=r"logit_rows\[0\] = 2 is outside \[0, 2\)"):
        _run(net, [1, 2], [0, 0], [0, 1], [2])
    with pytest.raises(ValueError, match="1 to 256 rows"):
        _run(net, [1] * 257, [0] * 257, range(257), [0])
    with pytest.raises(ValueError, match="positions must have shape"):
        _run(net, [1, 2], [0, 0], [0], [0])


def test_profile_charges_every_block(converted):
    model = moecc.load(converted("main", "q4"), threads=2, ctx=64)
    net = model.net
    net.profile = np.zeros(len(BLOCKS))
    _run(net, list(range(20)), [0] * 20, range(20), [19])
    assert np.all(net.profile > 0), dict(zip(BLOCKS, net.profile))
