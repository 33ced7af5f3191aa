"""ggml's K types (q4_k, q6_k) in moecc: the NumPy oracle (moecc.quant) against the gguf package's
own dequantizer, and every kernel path (decode GEMV, prefill GEMM, the MoE SwiGLU, embedding
lookup) against the oracle, on every ISA this machine has, 1 and 2 threads.

K-type weights meet q8_k activations (int8 per block of 256, a float scale, sums per 16) with
exact integer sums per super-block, so the reference for a product is

    ref = dequantize(w) @ dequantize(quantize_activations(x, block=256))      (float64)

which the kernels must meet to float32 rounding (|got - ref| <= RTOL * (|xq| @ |w|)). moecc has
no K-type quantizer (GGUF files bring the blocks): the weights are random valid super-blocks.
"""
import numpy as np
import pytest
from gguf import GGMLQuantizationType, quants

from moecc import _kernels as K
from moecc import quant, storage

KTYPES = ["q4_k", "q6_k"]
QK = storage.KBLOCK
RTOL = 1e-5
D_AT = {"q4_k": (0, 2), "q6_k": (208,)}  # byte offsets of the fp16 super-block scales


def random_rows(rng, name, shape, scale=1.0):
    """(uint8 rows [..., N, row_bytes] of random super-blocks of `name`, their values float64):
    every byte random but the fp16 scales, which are of magnitude ~ scale / (max q * max sub-scale)
    so that the weights are of magnitude ~ scale."""
    *lead, Kd = shape
    st = storage.get(name)
    nb = Kd // QK
    raw = rng.integers(0, 256, (*lead, nb, st.block_bytes), dtype=np.uint8)
    unit = scale / (15 * 63 if name == "q4_k" else 32 * 128)
    for at in D_AT[name]:
        d = (rng.uniform(0.5, 2.0, (*lead, nb)) * unit).astype(np.float16)
        raw[..., at:at + 2] = d.view(np.uint8).reshape(*lead, nb, 2)
    rows = raw.reshape(*lead, nb * st.block_bytes)
    return rows, quant.dequantize(rows, name, Kd).astype(np.float64)


def xk_values(x):
    """x as the K tiles see it: quantized per block of 256, as float64 (exact)."""
    q, d = quant.quantize_activations(x, block=QK)
    T, Kd = x.shape
    return (q.reshape(T, -1, QK).astype(np.float64) * d[..., None]).reshape(T, Kd)


def assert_matches(got, ref, magnitude, rtol=RTOL):
    err = np.abs(got.astype(np.float64) - ref)
    worst = np.unravel_index(np.argmax(err - rtol * magnitude), err.shape)
    assert np.all(err <= rtol * magnitude + 1e-30), (
        f"at {worst}: got {got[worst]}, ref {ref[worst]}, bound {rtol * magnitude[worst]}")


# ---- the oracle ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", KTYPES)
def test_dequantize_is_ggufs(name):
    # every byte random, the scales too (subnormal, inf and NaN fp16 included): bit for bit
    rng = np.random.default_rng(1)
    nb = 4096
    raw = rng.integers(0, 256, (8, nb // 8 * storage.get(name).block_bytes), dtype=np.uint8)
    with np.errstate(over="ignore", invalid="ignore"):
        expected = quants.dequantize(raw, GGMLQuantizationType[name.upper()])
        got = quant.dequantize(raw, name, nb // 8 * QK)
    np.testing.assert_array_equal(got, expected)


def test_q4_k_scales_by_hand():
    # sub-blocks 0..3: the low 6 bits of bytes 0..3 (scales) and 4..7 (mins); 4..7: the nibbles
    # of bytes 8..11 (scale low, min high) topped by the upper 2 bits of bytes 0..3 / 4..7
    packed = np.array([0b11_000001, 2, 3, 0b01_000100, 0b10_000101, 6, 7, 8,
                       0x9A, 0x00, 0xFF, 0x31], np.uint8)
    scales, mins = quant.q4_k_scales(packed)
    assert scales.tolist() == [1, 2, 3, 4, 0x0A | 3 << 4, 0, 0x0F, 0x01 | 1 << 4]
    assert mins.tolist() == [5, 6, 7, 8, 0x09 | 2 << 4, 0, 0x0F, 0x03]


def test_layout_by_hand():
    # one value set where the docstring puts it: q4_k value 64c + 32 + l is the high nibble of
    # qs[32c + l]; q6_k value 128h + 32i + l takes ql[64h + 32 (i % 2) + l], qh[32h + l] bits 2i..
    blk = np.zeros(144, np.uint8)
    blk[0:2] = np.array([1], np.float16).view(np.uint8)
    blk[4] = 1  # sub-block 0 scale 1
    blk[5] = 1  # sub-block 1 scale 1
    blk[16 + 7] = 0x50  # value 32 + 7 (sub-block 1): nibble 5
    w = quant.dequantize(blk[None], "q4_k", 256)[0]
    assert w[39] == 5 and np.count_nonzero(w) == 1
    blk = np.zeros(210, np.uint8)
    blk[208:210] = np.array([1], np.float16).view(np.uint8)
    blk[192:208] = 1
    h, i, l = 1, 3, 5
    blk[64 * h + 32 * (i % 2) + l] = 0xA0  # high nibble (i >= 2): 10
    blk[128 + 32 * h + l] = 0b10 << (2 * i)  # upper bits 2: q = 10 + 32 - 32
    w = quant.dequantize(blk[None], "q6_k", 256)[0]
    assert w[128 * h + 32 * i + l] == 10 and np.count_nonzero(w == -32) == 255


def test_no_quantizer():
    with pytest.raises(storage.StorageError, match="reads q4_k .from GGUF files. but has no quantizer"):
        quant.quantize(np.zeros((1, 256), np.float32), "q4_k")


def test_k_rows_need_whole_super_blocks():
    assert "blocks of 256 values, which do not divide the row length 288" in \
        storage.get("q6_k").shape_problem((4, 288))
    x, out = np.zeros((1, 288), np.float32), np.zeros((1, 2), np.float32)
    with pytest.raises(ValueError, match="blocks of 256"):
        K.matmul(x, np.zeros((2, 210), np.uint8), out, threads=1, storage="q6_k")


# ---- q8_k activations --------------------------------------------------------------------------


@pytest.mark.parametrize("Kd", [256, 768, 4096])
def test_quantize_activations_exact(isa, Kd):
    rng = np.random.default_rng(Kd)
    x = rng.standard_normal((6, Kd)).astype(np.float32) * np.float32(3)
    x[1, :256] = 0                       # an all-zero block: scale 0, q 0
    x[2, :256] = np.arange(256) - 127.5  # x / d lands on halves: ties to even
    x[2, 0] = 127
    x[3, -256:] = 1e-30
    q, d, bsums = K.quantize_activations(x, kind="q8_k")
    q_ref, d_ref = quant.quantize_activations(x, block=QK)
    np.testing.assert_array_equal(q, q_ref)
    np.testing.assert_array_equal(d, d_ref)
    np.testing.assert_array_equal(bsums, q_ref.reshape(6, -1, 16).sum(-1, dtype=np.int16))


def test_activation_rows_fit_the_buffers():
    # the model's activation buffer is sized by xq_bytes (q8_32): q8_k rows never take more
    for Kd in (256, 512, 2048, 12288):
        q8k = Kd + 4 * (Kd // 256) + 2 * (Kd // 16)
        assert q8k <= K.xq_bytes(Kd)


# ---- matmul --------------------------------------------------------------------------------------


def check_matmul(rng, threads, name, T, N, Kd):
    x = rng.standard_normal((T, Kd)).astype(np.float32)
    w, wref = random_rows(rng, name, (N, Kd))
    out = np.full((T, N), np.nan, np.float32)
    K.matmul(x, w, out, threads=threads, storage=name)
    xq = xk_values(x)
    assert_matches(out, xq @ wref.T, np.abs(xq) @ np.abs(wref).T)
    return out, x, wref


# (N, K / 256): odd N and every number of tile rows left over
SHAPES = [(1, 1), (3, 2), (5, 3), (4, 1), (13, 2), (6, 5)]


@pytest.mark.parametrize("name", KTYPES)
@pytest.mark.parametrize("T", [1, 2, 5, 17])
@pytest.mark.parametrize("N,nb", SHAPES)
def test_matmul(isa, threads, name, T, N, nb):
    rng = np.random.default_rng(T * 1000 + N * 10 + nb)
    out, x, wref = check_matmul(rng, threads, name, T, N, QK * nb)
    # against the float product with x itself, the activation quantization error alone: each
    # value within half a step of its block's scale
    half_step = np.repeat(quant.quantize_activations(x, block=QK)[1], QK, axis=-1) / 2
    exact = x.astype(np.float64) @ wref.T
    assert np.all(np.abs(out - exact) <= half_step @ np.abs(wref).T * (1 + 1e-4))


@pytest.mark.parametrize("name", KTYPES)
@pytest.mark.parametrize("T,Kd,N", [(70, 1024, 37), (1, 12288, 9), (3, 512, 300)])
def test_matmul_large(isa, threads, name, T, Kd, N):
    # 70 tokens: more than one token block; K = 12288: a decode row too long for the stack
    check_matmul(np.random.default_rng(T + Kd + N), threads, name, T, N, Kd)


def extreme_rows(rng, name, N, nb):
    """Rows whose products are at the ends of the int16 / int32 ranges: every quant at its
    largest or smallest (q4_k: nibbles 0 / 15; q6_k: 0 / 63), sub-block scales and mins at their
    ends (q4_k 63; q6_k -128 / 127), d = dmin = 1; row 0 all of the largest."""
    bb = storage.get(name).block_bytes
    blk = np.zeros((N, nb, bb), np.uint8)
    one = np.array([1], np.float16).view(np.uint8)
    if name == "q4_k":
        blk[..., 0:2] = blk[..., 2:4] = one
        blk[..., 4:16] = 0xFF  # every scale and min 63
        blk[..., 16:144] = rng.choice(np.array([0x00, 0x0F, 0xF0, 0xFF], np.uint8), (N, nb, 128))
        blk[0, :, 16:144] = 0xFF
    else:
        blk[..., 208:210] = one
        blk[..., 0:192] = rng.choice(np.array([0x00, 0xFF], np.uint8), (N, nb, 192))
        blk[..., 192:208] = rng.choice(np.array([0x80, 0x7F], np.uint8), (N, nb, 16))
        blk[0, :, 0:192] = 0xFF
    return blk.reshape(N, nb * bb)


@pytest.mark.parametrize("name", KTYPES)
@pytest.mark.parametrize("nb", [1, 4])
def test_matmul_extremes(isa, threads, name, nb):
    # every weight and activation at the ends of its range (activations +-127): no saturation
    rng = np.random.default_rng(nb)
    N, T, Kd = 8, 3, QK * nb
    w = extreme_rows(rng, name, N, nb)
    wref = quant.dequantize(w, name, Kd).astype(np.float64)
    x = rng.choice(np.array([-1.0, 1.0], np.float32), (T, Kd)) * np.float32(5)
    x[0] = 5.0
    out = np.empty((T, N), np.float32)
    K.matmul(x, w, out, threads=threads, storage=name)
    assert np.all(np.abs(quant.quantize_activations(x, block=QK)[0]) == 127)
    xq = xk_values(x)
    assert_matches(out, xq @ wref.T, np.abs(xq) @ np.abs(wref).T)


# ---- embedding -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", KTYPES)
def test_embedding(isa, threads, name):
    rng = np.random.default_rng(2)
    D = 2 * QK
    table, _ = random_rows(rng, name, (50, D))
    ids = np.concatenate([[0, 49, 3, 3, 17], rng.integers(0, 50, 60)]).astype(np.int32)
    out = np.empty((len(ids), D), np.float32)
    K.embedding(table, ids, out, threads=threads, storage=name)
    ref = quant.dequantize(table[ids], name, D)
    # ggml's float32 order of operations; a compiler may fuse (d * scale) * q - dmin * min
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())


# ---- moe_ffn -------------------------------------------------------------------------------------


def silu(z):
    return z / (1 + np.exp(-z))


def kind_values(x, name):
    """x as weights of type `name` see it: quantized per block of 32 or 256 (float64)."""
    block = {"q8_32": 32, "q8_k": QK}[storage.get(name).activations]
    q, d = quant.quantize_activations(x, block=block)
    T, Kd = x.shape
    return (q.reshape(T, -1, block).astype(np.float64) * d[..., None]).reshape(T, Kd)


def stored(rng, name, shape, scale):
    if name in KTYPES:
        return random_rows(rng, name, shape, scale)
    w = quant.quantize((rng.standard_normal(shape) * scale).astype(np.float32), name)
    return w, quant.dequantize(w, name, shape[-1]).astype(np.float64)


@pytest.mark.parametrize("gate_up,down", [("q4_k", "q6_k"), ("q6_k", "q4_k"), ("q4_k", "q8"), ("q4", "q6_k")])
@pytest.mark.parametrize("T,E,k", [(1, 8, 8), (1, 6, 3), (17, 8, 2)])  # decode by expert, by rows; prefill
def test_moe_ffn(isa, threads, gate_up, down, T, E, k):
    # a layer's down projection in another type than gate and up, of the same activation kind or
    # not (a Q4_K_M file's experts are q4_k with q6_k down in half the layers)
    D, I = 512, 256
    rng = np.random.default_rng(T * 100 + E * 10 + k)
    x = rng.standard_normal((T, D)).astype(np.float32)
    gate, gref = stored(rng, gate_up, (E, I, D), D**-0.5)
    up, uref = stored(rng, gate_up, (E, I, D), D**-0.5)
    dw, dref = stored(rng, down, (E, D, I), I**-0.5)
    idx = np.stack([rng.permutation(E)[:k] for _ in range(T)]).astype(np.int32)
    wts = rng.random((T, k)).astype(np.float32)
    scratch = np.empty(K.moe_scratch_floats(T, k, D, I), np.float32)
    out = np.full((T, D), np.nan, np.float32)
    K.moe_ffn(x, gate, up, dw, idx, wts, scratch, out, threads=threads, storage=gate_up, down_storage=down)
    ref = np.zeros((T, D))
    xq = kind_values(x, gate_up)
    for t in range(T):
        for j in range(k):
            e = idx[t, j]
            h = silu(gref[e] @ xq[t]) * (uref[e] @ xq[t])
            ref[t] += wts[t, j] * (dref[e] @ kind_values(h.astype(np.float32)[None], down)[0])
    # h is quantized from the kernel's float32 values: a value on a rounding edge may land one
    # step away from the reference's
    err = np.abs(out - ref)
    assert np.linalg.norm(err) <= 2e-3 * np.linalg.norm(ref)
    assert err.max() <= 1e-2 * np.abs(ref).max()
