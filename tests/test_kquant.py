"""moecc's K-type quantizers (kquant.c, through quant.quantize): hand-computed blocks, the bytes
under moecc's decoder and the gguf package's, the C kernel against its NumPy reference
(tests/kquant_reference.py), error ceilings, llama.cpp's q4_k search beaten on the same data, and
the importance weighting. The quantizer is portable C (no ISA paths); it runs on 1 and 2 threads.
"""
import numpy as np
import pytest
from gguf import GGMLQuantizationType, quants

import kquant_reference as R
from moecc import _kernels as K
from moecc import quant, storage

KTYPES = ["q4_k", "q5_k", "q6_k"]
QK = storage.KBLOCK


def ggml_decode(rows, name):
    return quants.dequantize(rows, GGMLQuantizationType[name.upper()]).reshape(rows.shape[0], -1)


def test_hand_computed_q4_k_block():
    """values that are exactly 63 * 2^-9 * L, L in 0..15 in every sub-block: d = 2^-9, every
    scale 63, every min 0, the nibbles L"""
    L = (np.arange(QK) * 7) % 16
    x = (L * 63 * 2.0**-9).astype(np.float32)[None]
    block = quant.quantize(x, "q4_k")[0]
    assert block[0:2].view(np.float16)[0] == np.float16(2.0**-9)
    assert block[2:4].view(np.uint16)[0] == 0  # dmin
    assert list(block[4:16]) == [255] * 4 + [0] * 4 + [15] * 4  # 63 = 0b111111 spread as packed
    assert list(block[16:48]) == [int(L[j] | L[32 + j] << 4) for j in range(32)]
    np.testing.assert_array_equal(quant.dequantize(block[None], "q4_k", QK), x)


def test_hand_computed_q5_k_block():
    L = (np.arange(QK) * 7) % 32
    x = (L * 63 * 2.0**-9).astype(np.float32)[None]
    block = quant.quantize(x, "q5_k")[0]
    assert block[0:2].view(np.float16)[0] == np.float16(2.0**-9)
    assert list(block[4:16]) == [255] * 4 + [0] * 4 + [15] * 4
    qh = [sum(((int(L[32 * j + l]) >> 4) & 1) << j for j in range(8)) for l in range(32)]
    assert list(block[16:48]) == qh
    assert list(block[48:80]) == [int((L[j] & 15) | (L[32 + j] & 15) << 4) for j in range(32)]
    np.testing.assert_array_equal(quant.dequantize(block[None], "q5_k", QK), x)


def test_hand_computed_q6_k_block():
    """values 2^-4 * L, L in -32..31 in every sub-block of 16 (-32 among them): d = -2^-11 with
    every scale -128, so d * scale = 2^-4 and q = L + 32"""
    L = np.concatenate([np.r_[-32, (np.arange(1, 16) * 5) % 64 - 32] for _ in range(16)])
    x = (L * 2.0**-4).astype(np.float32)[None]
    block = quant.quantize(x, "q6_k")[0]
    assert block[208:210].view(np.float16)[0] == np.float16(-(2.0**-11))
    assert list(block[192:208].view(np.int8)) == [-128] * 16
    q = L + 32
    assert block[0] == (q[0] & 15) | (q[64] & 15) << 4 and block[128] == (q[0] >> 4) | (q[32] >> 4) << 2 | \
        (q[64] >> 4) << 4 | (q[96] >> 4) << 6
    np.testing.assert_array_equal(quant.dequantize(block[None], "q6_k", QK), x)


@pytest.mark.parametrize("name", KTYPES)
@pytest.mark.parametrize("shape", [(1, 256), (3, 512), (7, 768), (2, 1280)])
@pytest.mark.parametrize("threads", [1, 2])
def test_kernel_equals_reference(name, shape, threads):
    rng = np.random.default_rng(hash((name, shape)) % 2**32)
    x = (rng.standard_normal(shape) * rng.uniform(0.01, 3)).astype(np.float32)
    x[0, :40] = 0  # an all-zero stretch: sub-blocks with nothing to fit
    for importance in (None, rng.uniform(0, 3, shape[1]).astype(np.float32)):
        got = K.quantize_k(x, name, importance=importance, threads=threads)
        per_block = None if importance is None else np.tile(importance.reshape(-1, QK), (shape[0], 1))
        parts = R.quantize(x.reshape(-1, QK), name, per_block)
        want = R.pack(parts, name)
        blocks = got.reshape(want.shape)
        same = (blocks == want).all(axis=-1)
        assert same.mean() >= 0.99, f"{(~same).sum()} of {same.size} super-blocks differ"
        decoded = quant.dequantize(got, name, shape[1])
        np.testing.assert_array_equal(decoded, ggml_decode(got, name))  # ggml reads the same values
        np.testing.assert_allclose(decoded.reshape(-1, QK)[same], R.decode(parts, name)[same], rtol=1e-6, atol=0)


@pytest.mark.parametrize("name,rel_rms,step_bound", [("q4_k", 0.075, 0.75), ("q5_k", 0.037, 0.75),
                                                     ("q6_k", 0.019, 0.75)])
def test_round_trip_error(name, rel_rms, step_bound):
    """RMS error over Gaussian rows (ceilings from 0.0704 / 0.0347 / 0.0173 measured), and every
    value within step_bound of its sub-block's step d * |scale| of where the ints put it"""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((33, 1024)).astype(np.float32)
    rows = quant.quantize(x, name)
    y = quant.dequantize(rows, name, 1024)
    assert np.sqrt(((y - x) ** 2).mean()) <= rel_rms
    u = quant.unpack_k(rows, name)
    step = np.abs(u["d"][..., None] * u["scale"]).repeat(16, axis=-1).reshape(x.shape)
    assert (np.abs(y - x) <= step_bound * step + 1e-7).mean() >= 0.999
    assert (np.abs(y - x) <= 2 * step + 1e-7).all()


def test_beats_llamacpp_q4_k_search():
    """the same Gaussian super-blocks: moecc's squared error at most 0.98 of llama.cpp's
    quantize_row_q4_K_ref (4% lower on the trained test model's matrices, measured)"""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2000, QK)).astype(np.float32)
    ours = quant.dequantize(quant.quantize(x, "q4_k"), "q4_k", QK)
    theirs = R.decode(R.quantize_llamacpp_q4_k(x), "q4_k")
    assert ((ours - x) ** 2).sum() <= 0.98 * ((theirs - x) ** 2).sum()


@pytest.mark.parametrize("name", KTYPES)
def test_importance_lowers_weighted_error(name):
    """columns of importance 50 among ones: quantized with that importance, the importance-weighted
    error is lower than quantized without"""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 512)).astype(np.float32)
    importance = np.ones(512, np.float32)
    importance[rng.choice(512, 40, replace=False)] = 50
    err = [(importance * (quant.dequantize(quant.quantize(x, name, importance=imp), name, 512) - x) ** 2).sum()
           for imp in (None, importance)]
    assert err[1] < 0.8 * err[0]


def test_refusals():
    with pytest.raises(storage.StorageError, match="blocks of 256"):
        quant.quantize(np.zeros((2, 320), np.float32), "q4_k")
    with pytest.raises(ValueError, match="not finite"):
        K.quantize_k(np.full((1, 256), np.nan, np.float32), "q6_k")
    with pytest.raises(ValueError, match="importance must have shape"):
        K.quantize_k(np.zeros((1, 256), np.float32), "q4_k", importance=np.ones(128, np.float32))
    with pytest.raises(ValueError, match=">= 0"):
        K.quantize_k(np.zeros((1, 256), np.float32), "q4_k", importance=-np.ones(256, np.float32))
    with pytest.raises(ValueError, match="quantize_k writes"):
        K.quantize_k(np.zeros((1, 256), np.float32), "q4")
    with pytest.raises(storage.StorageError, match="importance"):
        quant.quantize(np.zeros((1, 256), np.float32), "q8", importance=np.ones(256, np.float32))
