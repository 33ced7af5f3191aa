"""Each sampler setting, tested statistically against its definition."""
import numpy as np
import pytest

from moecc.sampler import Sampler, SamplingParams, log_softmax


def _frequencies(logits, n=20000, **params):
    sampler = Sampler(SamplingParams(seed=0, **params))
    counts = np.zeros(len(logits))
    for _ in range(n):
        counts[sampler.sample(logits.copy())] += 1
    return counts / n


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


LOGITS = np.log(np.array([0.4, 0.25, 0.15, 0.1, 0.05, 0.03, 0.02])).astype(np.float32)


def test_greedy_is_argmax():
    logits = np.random.default_rng(1).normal(size=1000).astype(np.float32)
    assert Sampler(SamplingParams(temperature=0)).sample(logits.copy()) == int(np.argmax(logits))
    assert Sampler(SamplingParams(temperature=1.0, top_k=1, seed=5)).sample(logits.copy()) == int(np.argmax(logits))


def test_temperature_one_follows_softmax():
    freq = _frequencies(LOGITS, temperature=1.0)
    np.testing.assert_allclose(freq, _softmax(LOGITS), atol=0.012)


def test_temperature_scales_logits():
    freq = _frequencies(LOGITS, temperature=0.5)
    np.testing.assert_allclose(freq, _softmax(LOGITS / 0.5), atol=0.012)


def test_top_k_keeps_k_most_likely_renormalised():
    freq = _frequencies(LOGITS, temperature=1.0, top_k=3)
    expected = np.zeros(len(LOGITS))
    expected[:3] = _softmax(LOGITS[:3])
    np.testing.assert_allclose(freq, expected, atol=0.012)


def test_top_p_keeps_smallest_set_reaching_p():
    # cumulative: 0.4, 0.65, 0.8, 0.9 -> top_p 0.7 keeps the first three
    freq = _frequencies(LOGITS, temperature=1.0, top_p=0.7)
    expected = np.zeros(len(LOGITS))
    expected[:3] = np.array([0.4, 0.25, 0.15]) / 0.8
    np.testing.assert_allclose(freq, expected, atol=0.012)


def test_top_p_on_a_large_vocabulary_grows_its_candidate_set():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=151936).astype(np.float32)
    probs = _softmax(logits.astype(np.float64))
    order = np.argsort(-probs)
    keep = order[:np.searchsorted(np.cumsum(probs[order]), 0.5) + 1]
    sampler = Sampler(SamplingParams(temperature=1.0, top_p=0.5, seed=0))
    picks = {sampler.sample(logits.copy()) for _ in range(300)}
    assert picks <= set(keep.tolist()) and len(picks) > 100


def test_min_p_drops_tokens_below_fraction_of_top():
    # min_p 0.3: threshold 0.12 keeps 0.4, 0.25, 0.15
    freq = _frequencies(LOGITS, temperature=1.0, min_p=0.3)
    expected = np.zeros(len(LOGITS))
    expected[:3] = np.array([0.4, 0.25, 0.15]) / 0.8
    np.testing.assert_allclose(freq, expected, atol=0.012)


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = np.array([2.0, -1.0, 0.5], np.float32)
    sampler = Sampler(SamplingParams(temperature=0, repetition_penalty=2.0), prompt_ids=[0, 1])
    penalised = logits.copy()
    sampler.sample(penalised)
    np.testing.assert_allclose(penalised, [1.0, -2.0, 0.5])


def test_presence_penalty_applies_once_to_generated_tokens():
    sampler = Sampler(SamplingParams(temperature=0, presence_penalty=1.5))
    first = sampler.sample(np.array([1.0, 0.9, 0.0], np.float32))
    assert first == 0
    assert sampler.sample(np.array([1.0, 0.9, 0.0], np.float32)) == 1  # 1.0 - 1.5 < 0.9


def test_frequency_and_presence_penalties_follow_openais_formula():
    """logit -= presence * (count > 0) + frequency * count, over the generated tokens only."""
    rng = np.random.default_rng(7)
    vocab = 50
    sampler = Sampler(SamplingParams(temperature=1.0, seed=3, presence_penalty=0.3, frequency_penalty=0.7),
                      prompt_ids=[1, 2, 3])
    counts = np.zeros(vocab)
    for _ in range(40):
        logits = rng.normal(size=vocab).astype(np.float32)
        expected = logits - 0.3 * (counts > 0) - 0.7 * counts
        penalised = logits.copy()
        token = sampler.sample(penalised)
        np.testing.assert_allclose(penalised, expected, rtol=1e-6, atol=1e-6)
        counts[token] += 1
    assert counts.max() > 1  # some token was penalised more than once


def test_log_softmax_matches_its_definition():
    logits = np.random.default_rng(4).normal(scale=10, size=777).astype(np.float32)
    x = logits.astype(np.float64)
    np.testing.assert_allclose(log_softmax(logits), x - np.log(np.exp(x - x.max()).sum()) - x.max(), rtol=1e-6)


def test_same_seed_same_tokens():
    logits = np.random.default_rng(3).normal(size=500).astype(np.float32)
    a = [Sampler(SamplingParams(seed=42, temperature=1.0)).sample(logits.copy()) for _ in range(5)]
    b = [Sampler(SamplingParams(seed=42, temperature=1.0)).sample(logits.copy()) for _ in range(5)]
    assert a == b


@pytest.mark.parametrize("bad", [dict(top_p=0), dict(top_p=1.5), dict(temperature=-1), dict(top_k=-1),
                                 dict(min_p=1.0), dict(repetition_penalty=0)])
def test_nonsense_values_refused(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)
