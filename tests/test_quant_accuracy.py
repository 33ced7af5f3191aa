"""Accuracy of quantized models (q8, q4, the K types, the q4_k_m mix) against transformers,
bounded by the error of the weights alone.

For each storage type and group size, the engine's error on the fixture is compared with the
error of the float engine run on weights that were quantized and dequantized in NumPy (the
quantization of the weights alone).  The quantized engine also quantizes activations, so it may
be somewhat worse, but not more than twice: a wrong scale, grouping or activation quantization
breaks the bound."""
import json
import os

import numpy as np
import pytest

import moecc
from conftest import FIXTURES, Reference, logit_errors, weights_only_checkpoint
from moecc.convert import StoragePlan, convert

SETTINGS = ["q8", "q4", "q4_k", "q6_k", "q4_k_m"]


@pytest.mark.parametrize("dtype", SETTINGS)
def test_quantized_error_within_twice_the_weights_alone(tmp_path, dtype):
    reference = Reference("main")
    plan = StoragePlan(dtype)
    quantized = tmp_path / "q.moecc"
    convert(reference.hf_dir, str(quantized), plan, progress=False)
    weights_only_checkpoint("main", dtype, tmp_path / "dequantized")
    weights_only = tmp_path / "w.moecc"
    convert(str(tmp_path / "dequantized"), str(weights_only), "f32", progress=False)

    err_q, top1_q = logit_errors(moecc.load(quantized, threads=2), reference.prompts())
    err_w, top1_w = logit_errors(moecc.load(weights_only, threads=2), reference.prompts())
    print(json.dumps({"dtype": dtype, "engine_rel_err": err_q, "engine_top1": top1_q,
                      "weights_only_rel_err": err_w, "weights_only_top1": top1_w}))
    assert err_w > 1e-4  # the quantization is real (the f32 engine alone is ~1e-6 off)
    assert err_q <= 2 * err_w, f"{dtype}: engine error {err_q:.4f} > 2 x weights-only {err_w:.4f}"
    assert top1_q >= top1_w - 0.05  # top-1 agreement with transformers as good as the weights allow


def test_width_not_a_whole_number_of_blocks_is_refused_by_name(tmp_path, capsys):
    from moecc.convert import main
    code = main([os.path.join(FIXTURES, "odd", "hf"), "-o", str(tmp_path / "m.moecc"), "--quant", "q4", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "model.embed_tokens.weight: q4 stores rows in blocks of 32 values" in err and "--keep" in err
    assert os.listdir(tmp_path) == []


def test_q4_g32_file_costs_4_5_bits_per_weight(converted, tmp_path):
    from moecc.formats import FormatError, moecc_file
    out = tmp_path / "q4.moecc"
    convert(os.path.join(FIXTURES, "main", "hf"), str(out), StoragePlan("q4"), progress=False)
    mf = moecc_file.ModelFile(out)
    quantized = [e for e in mf.tensors.values() if e.dtype == "q4"]
    bits = 8 * sum(e.size for e in quantized) / sum(int(np.prod(e.shape)) for e in quantized)
    assert abs(bits - 4.5) / 4.5 <= 0.03
    mf.close()
