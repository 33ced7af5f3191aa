"""The engine against transformers' own logits and greedy tokens, on the fixture checkpoints."""
import numpy as np
import pytest

import moecc
from conftest import relative_error

TOLERANCE = 1e-4  # float32 KV cache: only float32 rounding separates the engine from transformers
# f16 KV cache: keys and values rounded to 11 significant bits (2^-11 = 4.9e-4 relative); measured
# worst case 4.4e-4 (odd fixture, 130 tokens), so this bound leaves ~2x and still catches a real bug
TOLERANCE_F16_CACHE = 1e-3


@pytest.mark.parametrize("quant", ["f32", "bf16"])
@pytest.mark.parametrize("kv_cache", ["f32", "f16"])
def test_logits_match_transformers(reference, converted, quant, kv_cache):
    model = moecc.load(converted(reference.case, quant), threads=2, kv_cache=kv_cache)
    assert model.net.cache.k.dtype == np.dtype("float16" if kv_cache == "f16" else "float32")
    tolerance = TOLERANCE if kv_cache == "f32" else TOLERANCE_F16_CACHE
    for ids, expected in reference.prompts():
        got = model.logits(ids.tolist())
        assert got.shape == expected.shape and got.dtype == np.float32
        err = relative_error(got, expected)
        assert err <= tolerance, (f"{reference.case}/{quant}, kv cache {kv_cache}, prompt of {len(ids)} tokens: "
                                  f"error {err:.2e}")


def test_prompts_cover_a_long_prefill(reference):
    assert max(len(ids) for ids, _ in reference.prompts()) > (256 if reference.case == "main" else 1)


def test_greedy_generation_matches_transformers(reference, converted):
    model = moecc.load(converted(reference.case, "bf16"), threads=2)
    model.eos_token_ids = frozenset()  # transformers' continuation was made without EOS stopping
    for prompt, expected in reference.greedy():
        steps = list(model.generate(prompt.tolist(), max_tokens=len(expected), temperature=0))
        assert [s.token for s in steps] == expected.tolist()
        assert steps[-1].finish_reason == "length"


def test_tokenizer_matches_reference_ids(reference, converted):
    model = moecc.load(converted(reference.case, "bf16"))
    for prompt, (ids, _) in zip(reference.meta["prompts"], reference.prompts()):
        assert model.tokenizer.encode(prompt["text"]) == ids.tolist()


def test_decode_through_cache_equals_full_recompute(converted):
    """Logits of each new token fed through the KV cache equal a full forward over the prefix."""
    model = moecc.load(converted("main", "f32"), threads=2)
    steps = list(model.generate("The quick brown fox", max_tokens=12, temperature=0.8, seed=3))
    model.eos_token_ids = frozenset()
    prompt = model.tokenizer.encode("The quick brown fox")
    tokens = [s.token for s in steps]
    full = model.logits(prompt + tokens)
    # regenerate step by step and compare each step's logits with the full pass
    with model._exclusive():
        last = model._feed(np.asarray(prompt, np.int32), 0, None).copy()
        np.testing.assert_allclose(last, full[len(prompt) - 1], rtol=0, atol=1e-4 * np.abs(full).max())
        for i, token in enumerate(tokens[:-1]):
            last = model._decode(token, len(prompt) + i).copy()
            np.testing.assert_allclose(last, full[len(prompt) + i], rtol=0, atol=1e-4 * np.abs(full).max())


def test_threads_agree(converted):
    ids = list(range(3, 60))
    one = moecc.load(converted("main", "f32"), threads=1).logits(ids)
    two = moecc.load(converted("main", "f32"), threads=2).logits(ids)
    assert relative_error(two, one) < 1e-5


def test_chunked_prefill_equals_logits_of_a_shorter_prompt(converted):
    """Positions before a chunk boundary do not depend on what comes after (causality)."""
    model = moecc.load(converted("main", "f32"))
    ids = [(7 * i) % 300 + 3 for i in range(300)]
    full = model.logits(ids)
    head = model.logits(ids[:100])
    assert relative_error(full[:100], head) < 1e-5
