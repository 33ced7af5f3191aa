"""The engine against transformers on every instruction-set path this machine can run.

Each fixture case is run with each available ISA forced (conftest's `isa` fixture) and a float32
KV cache: logits of every prompt within 1e-4 of transformers' and greedy generation equal token
for token.  `gqa` / `gqa16` have the real models' attention (head_dim 128, 8 and 16 query heads
per KV head, all scored together against each key block by the attention kernel), `gqa` has
64 experts, top-8, and a prompt longer than the 256-token prefill chunk.

On `gqa`, q8 and q4 files are held on each ISA to the bound of test_quant_accuracy.py, with the
float32 engine on the same ISA as the reference: the error is at most twice that of the float32
engine run on weights quantized and dequantized in NumPy (the weights' own rounding), and top-1
agreement at most 5 points below the weights-only one."""
import os

import numpy as np
import pytest

import moecc
from conftest import FIXTURES, Reference, logit_errors, relative_error, weights_only_checkpoint
from moecc import _kernels as K
from moecc.convert import convert

CASES = ("main", "odd", "gqa", "gqa16")
TOLERANCE = 1e-4  # float32 KV cache: only float32 rounding separates the engine from transformers
QUANT_CASE = "gqa"
QUANTIZED = ("q8", "q4")  # as converted(case, quant) makes them

_references: dict[str, Reference] = {}


def _reference(case: str) -> Reference:
    if case not in _references:
        _references[case] = Reference(case)
    return _references[case]


def _load(path: str):
    return moecc.load(path, threads=2, kv_cache="f32")


def test_fixtures_have_the_real_attention_geometry():
    """What the other tests here rely on the gqa cases to cover (guards a regeneration)."""
    for case, group in (("gqa", 8), ("gqa16", 16)):
        ref = _reference(case)
        cfg = ref.meta["config_json"]
        assert cfg["head_dim"] == 128 and cfg["num_key_value_heads"] == 4
        assert cfg["num_attention_heads"] == group * cfg["num_key_value_heads"]
        assert cfg["mlp_only_layers"] == [] and cfg["decoder_sparse_step"] == 1
        assert len(ref.meta["moe_layers"]) == cfg["num_hidden_layers"] >= 2
    cfg = _reference("gqa").meta["config_json"]
    assert (cfg["num_experts"], cfg["num_experts_per_tok"], cfg["norm_topk_prob"]) == (64, 8, True)
    assert max(len(ids) for ids, _ in _reference("gqa").prompts()) > 256  # two prefill chunks
    assert os.path.exists(os.path.join(FIXTURES, "gqa", "hf", "model.safetensors.index.json"))


@pytest.mark.parametrize("case", CASES)
def test_logits_match_transformers_on_every_isa(case, isa, converted):
    ref = _reference(case)
    model = _load(converted(case, "f32"))
    assert K.get_isa() == isa
    errors = []
    for ids, expected in ref.prompts():
        got = model.logits(ids.tolist())
        assert got.shape == expected.shape and got.dtype == np.float32
        errors.append((len(ids), relative_error(got, expected)))
    bad = [(n, err) for n, err in errors if not err <= TOLERANCE]
    assert not bad, f"{case} on {isa}: " + ", ".join(f"prompt of {n} tokens: error {err:.2e}" for n, err in bad)


@pytest.mark.parametrize("case", CASES)
def test_greedy_generation_matches_transformers_on_every_isa(case, isa, converted):
    ref = _reference(case)
    model = _load(converted(case, "f32"))
    assert K.get_isa() == isa
    model.eos_token_ids = frozenset()  # transformers' continuation was made without EOS stopping
    for prompt, expected in ref.greedy():
        steps = list(model.generate(prompt.tolist(), max_tokens=len(expected), temperature=0))
        tokens = [s.token for s in steps]
        first = next((i for i, (a, b) in enumerate(zip(tokens, expected.tolist())) if a != b), None)
        assert tokens == expected.tolist(), (f"{case} on {isa}, prompt of {len(prompt)} tokens: token {first} "
                                             f"is {tokens[first] if first is not None else None}, transformers "
                                             f"says {expected[first] if first is not None else None}")
        assert steps[-1].finish_reason == "length"


@pytest.fixture(scope="session")
def weights_only(tmp_path_factory):
    """weights_only(case, dtype) -> a .moecc f32 file of that fixture with every tensor the plan
    quantizes replaced by dequantize(quantize(w)) (as test_quant_accuracy.py does for `main`)."""
    made: dict[tuple[str, str], str] = {}

    def get(case: str, dtype: str) -> str:
        if (case, dtype) not in made:
            folder = tmp_path_factory.mktemp(f"{case}-{dtype}-dequantized")
            weights_only_checkpoint(case, dtype, folder)
            out = str(tmp_path_factory.mktemp("models") / f"{case}-{dtype}-weights-only.moecc")
            convert(str(folder), out, "f32", progress=False)
            made[case, dtype] = out
        return made[case, dtype]
    return get


@pytest.mark.parametrize("dtype", QUANTIZED)
def test_quantized_within_twice_the_weights_alone_on_every_isa(dtype, isa, converted, weights_only):
    ref = _reference(QUANT_CASE)
    f32 = _load(converted(QUANT_CASE, "f32"))
    baselines = [(ids, f32.logits(ids.tolist())) for ids, _ in ref.prompts()]
    err_q, top1_q = logit_errors(_load(converted(QUANT_CASE, dtype)), baselines)
    err_w, top1_w = logit_errors(_load(weights_only(QUANT_CASE, dtype)), baselines)
    assert K.get_isa() == isa
    what = (f"{QUANT_CASE} {dtype} on {isa}: engine error {err_q:.4f} (top-1 {top1_q:.3f}), "
            f"weights alone {err_w:.4f} (top-1 {top1_w:.3f})")
    print(what)
    assert err_w > 1e-4, what  # the quantization is real (the f32 engine's own error is ~1e-6)
    assert err_q <= 2 * err_w, what
    assert top1_q >= top1_w - 0.05, what
