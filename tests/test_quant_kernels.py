"""The q8 / q4 kernels against the NumPy oracle (moecc.quant), on every ISA this machine has,
1 and 2 threads.

The kernels quantize activations per block of 32 (quant.quantize_activations) and take exact
integer sums per block, so the reference for a product is

    ref = dequantize(w) @ dequantize(quantize_activations(x))      (float64)

which they must meet to float32 rounding: |got - ref| <= RTOL * (|xq| @ |w|) elementwise and
||got - ref|| <= RTOL * ||ref||. Against the float product with the raw x the difference is the
activation quantization error alone, a fraction of a percent.
"""
import numpy as np
import pytest

from moecc import _kernels as K
from moecc import quant, storage

RTOL = 1e-5
QTYPES = ["q8", "q4"]
G = 32  # values per block (and per fp16 scale) of every quantized type


def quantized(rng, shape, dtype, scale=1.0):
    """(stored uint8 rows, their exact values as float64)."""
    w = (rng.standard_normal(shape) * scale).astype(np.float32)
    stored = quant.quantize(w, dtype)
    return stored, quant.dequantize(stored, dtype, shape[-1]).astype(np.float64)


def xq_values(x):
    """x as the kernels see it: quantized per block of 32, as float64 (exact)."""
    q, d = quant.quantize_activations(x)
    T, Kd = x.shape
    return (q.reshape(T, -1, 32).astype(np.float64) * d[..., None]).reshape(T, Kd)


def assert_matches(got, ref, magnitude, rtol=RTOL):
    err = np.abs(got.astype(np.float64) - ref)
    worst = np.unravel_index(np.argmax(err - rtol * magnitude), err.shape)
    assert np.all(err <= rtol * magnitude + 1e-30), (
        f"at {worst}: got {got[worst]}, ref {ref[worst]}, bound {rtol * magnitude[worst]}")
    assert np.linalg.norm(err) <= rtol * np.linalg.norm(ref) + 1e-30


# ---- formats -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["f32", "bf16"] + QTYPES)
@pytest.mark.parametrize("mult", [1, 3, 8])
def test_row_bytes(dtype, mult):
    assert K.row_bytes(dtype, G * mult) == storage.get(dtype).row_bytes(G * mult)


@pytest.mark.parametrize("Kd", [32, 96, 160, 2048])
def test_quantize_activations_exact(isa, Kd):
    rng = np.random.default_rng(Kd)
    x = rng.standard_normal((7, Kd)).astype(np.float32) * np.float32(3)
    x[1, :32] = 0                      # an all-zero block: scale 0, q 0
    x[2, -32:] = 1e-30                 # tiny but not zero
    x[3, :32] = np.arange(32) - 15.5   # max 127 below: scale 1, so x / d is x: ties to even
    x[3, 0] = 127
    x[4, :] = np.float32(1e30) * np.sign(x[4])
    q, d, sums = K.quantize_activations(x)
    q_ref, d_ref = quant.quantize_activations(x)
    np.testing.assert_array_equal(q, q_ref)
    np.testing.assert_array_equal(d, d_ref)
    np.testing.assert_array_equal(sums, q_ref.reshape(7, -1, 32).sum(-1, dtype=np.int32))


def test_quantize_activations_checks():
    with pytest.raises(ValueError, match="multiple of 32"):
        K.quantize_activations(np.zeros((2, 48), np.float32))
    with pytest.raises(ValueError, match="q8_k: the row length must be a multiple of 256"):
        K.quantize_activations(np.zeros((2, 96), np.float32), kind="q8_k")
    with pytest.raises(ValueError, match="unknown activation kind 'q4'"):
        K.quantize_activations(np.zeros((2, 64), np.float32), kind="q4")
    with pytest.raises(TypeError, match="float32"):
        K.quantize_activations(np.zeros((2, 64), np.float64))


# ---- matmul ----------------------------------------------------------------------------------


def check_matmul(rng, threads, dtype, T, N, Kd):
    """matmul of random x [T, Kd] and weights [N, Kd] stored as dtype against the oracle;
    returns (out, x, wref) for further checks."""
    x = rng.standard_normal((T, Kd)).astype(np.float32)
    w, wref = quantized(rng, (N, Kd), dtype)
    out = np.full((T, N), np.nan, np.float32)
    K.matmul(x, w, out, threads=threads, storage=dtype)
    xq = xq_values(x)
    assert_matches(out, xq @ wref.T, np.abs(xq) @ np.abs(wref).T)
    return out, x, wref


# (N, K / 32): odd N, every number of tile rows left over, and rows ending anywhere in a step
# of 16 blocks or half of one (1, 2, 3, 5, 6, 7, 9, 11, 16, 17, 24, 33 blocks of 32)
SHAPES = [(1, 1), (3, 2), (33, 3), (20, 5), (5, 6), (129, 7), (7, 9), (4, 11), (3, 16), (6, 17),
          (2, 24), (9, 33)]


@pytest.mark.parametrize("dtype", QTYPES)
@pytest.mark.parametrize("T", [1, 2, 3, 5, 17, 70])
@pytest.mark.parametrize("N,mult", SHAPES)
def test_matmul(isa, threads, dtype, T, N, mult):
    rng = np.random.default_rng(T * 1000 + N * 10 + mult)
    out, x, wref = check_matmul(rng, threads, dtype, T, N, G * mult)
    # the activation quantization error alone: small next to the float product with x itself
    exact = x.astype(np.float64) @ wref.T
    assert np.linalg.norm(out - exact) <= 0.02 * np.linalg.norm(exact)


@pytest.mark.parametrize("dtype", QTYPES)
@pytest.mark.parametrize("T,Kd,N", [(70, 1024, 37), (1, 10240, 9), (3, 512, 300)])
def test_matmul_large(isa, threads, dtype, T, Kd, N):
    # 70 tokens: more than one token block; K = 10240: a decode row too long for the stack
    check_matmul(np.random.default_rng(T + Kd + N), threads, dtype, T, N, Kd)


def extreme_rows(rng, dtype, N, Kd):
    """q8 / q4 rows of the extreme values only (q8: -128 and 127; q4: nibbles 0 and 15), row 0
    all of the lowest, scales 1."""
    nb = Kd // G
    if dtype == "q8":
        values = rng.choice(np.array([-128, 127], np.int8), (N, Kd))
        values[0] = -128
        values = values.view(np.uint8)
    else:
        nib = rng.choice(np.array([0, 15], np.uint8), (N, Kd // 2, 2))
        nib[0] = 0
        values = nib[..., 0] | (nib[..., 1] << 4)
    return quant.assemble(dtype, values, np.ones((N, nb), np.float16))


@pytest.mark.parametrize("dtype", QTYPES)
@pytest.mark.parametrize("Kd", [96, 128, 544, 1024])
def test_matmul_extremes(isa, threads, dtype, Kd):
    # every weight and activation at the ends of its range (activations +-127): no int16 / int32
    # saturation
    rng = np.random.default_rng(Kd)
    N, T = 8, 3
    w = extreme_rows(rng, dtype, N, Kd)
    wref = quant.dequantize(w, dtype, Kd).astype(np.float64)
    x = rng.choice(np.array([-1.0, 1.0], np.float32), (T, Kd)) * np.float32(5)
    x[0] = -5.0
    out = np.empty((T, N), np.float32)
    K.matmul(x, w, out, threads=threads, storage=dtype)
    assert np.all(np.abs(quant.quantize_activations(x)[0]) == 127)
    xq = xq_values(x)
    assert_matches(out, xq @ wref.T, np.abs(xq) @ np.abs(wref).T)


# ---- embedding -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", QTYPES)
@pytest.mark.parametrize("mult", [1, 3])
def test_embedding(threads, dtype, mult):
    D = G * mult
    rng = np.random.default_rng(mult)
    table, ref = quantized(rng, (50, D), dtype)
    ids = np.concatenate([[0, 49, 3, 3, 17], rng.integers(0, 50, 100)]).astype(np.int32)
    out = np.empty((len(ids), D), np.float32)
    K.embedding(table, ids, out, threads=threads, storage=dtype)
    np.testing.assert_array_equal(out, quant.dequantize(table[ids], dtype, D))


@pytest.mark.parametrize("dtype", QTYPES)
def test_embedding_fp16_scales(dtype):
    # every fp16 bit pattern as a block scale (subnormals, zeros, inf, NaN) converts exactly, at
    # every block position of a row (storage.c: one path for every ISA)
    D = 4 * G
    rng = np.random.default_rng(4)
    scales = np.arange(1 << 16, dtype=np.uint16).view(np.float16).reshape(-1, D // G)
    V = len(scales)
    values = rng.integers(0, 256, (V, D if dtype == "q8" else D // 2), dtype=np.uint8)
    table = quant.assemble(dtype, values, scales)
    ids = np.arange(V, dtype=np.int32)
    out = np.empty((V, D), np.float32)
    K.embedding(table, ids, out, threads=1, storage=dtype)
    with np.errstate(invalid="ignore"):  # inf * 0
        np.testing.assert_array_equal(out, quant.dequantize(table, dtype, D))


# ---- moe_ffn ---------------------------------------------------------------------------------


def silu(z):
    return z / (1 + np.exp(-z))


def moe_ref(x, gate, up, down, idx, wts):
    """SwiGLU experts on dequantized weights, with the activations quantized where the kernel
    quantizes them: x before gate / up, h before down."""
    out = np.zeros(x.shape)
    xq = xq_values(x)
    for t in range(x.shape[0]):
        for j in range(idx.shape[1]):
            e = idx[t, j]
            h = silu(gate[e] @ xq[t]) * (up[e] @ xq[t])
            hq = xq_values(h.astype(np.float32)[None])[0]
            out[t] += wts[t, j] * (down[e] @ hq)
    return out


def check_moe_ffn(threads, dtype, T, E, k, D, I, down_dtype=None):
    """moe_ffn of T random tokens, each routed to k of E random experts stored as dtype,
    against moe_ref."""
    rng = np.random.default_rng(T * 100 + E * 10 + D + I)
    x = rng.standard_normal((T, D)).astype(np.float32)
    gate, gref = quantized(rng, (E, I, D), dtype, scale=D**-0.5)
    up, uref = quantized(rng, (E, I, D), dtype, scale=D**-0.5)
    down, dref = quantized(rng, (E, D, I), down_dtype or dtype, scale=I**-0.5)
    idx = np.stack([rng.permutation(E)[:k] for _ in range(T)]).astype(np.int32)
    wts = rng.random((T, k)).astype(np.float32)
    scratch = np.empty(K.moe_scratch_floats(T, k, D, I), np.float32)
    out = np.full((T, D), np.nan, np.float32)
    K.moe_ffn(x, gate, up, down, idx, wts, scratch, out, threads=threads, storage=dtype,
              down_storage=down_dtype)
    ref = moe_ref(x, gref, uref, dref, idx, wts.astype(np.float64))
    # h is quantized from the kernel's float32 values: a value on a rounding edge may land one
    # step away from the reference's, an error of one quantization step of that block
    err = np.abs(out - ref)
    assert np.linalg.norm(err) <= 2e-3 * np.linalg.norm(ref)
    assert err.max() <= 1e-2 * np.abs(ref).max()


@pytest.mark.parametrize("dtype", QTYPES)
@pytest.mark.parametrize(
    "T,E,k,dm,im",
    [(1, 8, 2, 2, 3), (1, 1, 1, 1, 2), (2, 4, 2, 1, 1), (5, 6, 3, 3, 2), (17, 8, 2, 1, 3)],
)
def test_moe_ffn(isa, threads, dtype, T, E, k, dm, im):
    check_moe_ffn(threads, dtype, T, E, k, G * dm, G * im)


@pytest.mark.parametrize("T", [1, 5])
@pytest.mark.parametrize("gate_up,down", [("q4p", "q8"), ("q8", "q4p"), ("q4", "q8"), ("q8", "q4")])
def test_moe_ffn_down_in_another_type(isa, threads, T, gate_up, down):
    # a layer's down projection may be stored in another type than its gate and up (GGUF's
    # Q4_K_M files mix types within a layer)
    check_moe_ffn(threads, gate_up, T, 8, 2, 64, 96, down_dtype=down)


def test_moe_ffn_repeated_expert(isa, threads):
    # one token routed twice to the same expert, several tokens sharing experts
    D, I, E = 128, 192, 4
    rng = np.random.default_rng(3)
    idx = np.array([[1, 1, 2], [3, 1, 0], [2, 2, 1]], np.int32)
    x = rng.standard_normal((3, D)).astype(np.float32)
    gate, gref = quantized(rng, (E, I, D), "q4", scale=D**-0.5)
    up, uref = quantized(rng, (E, I, D), "q4", scale=D**-0.5)
    down, dref = quantized(rng, (E, D, I), "q4", scale=I**-0.5)
    wts = rng.random((3, 3)).astype(np.float32)
    for rows in (slice(0, 1), slice(0, 3)):
        T = rows.stop - rows.start
        scratch = np.empty(K.moe_scratch_floats(T, 3, D, I), np.float32)
        out = np.empty((T, D), np.float32)
        K.moe_ffn(x[rows], gate, up, down, idx[rows], wts[rows], scratch, out, threads=threads, storage="q4")
        ref = moe_ref(x[rows], gref, uref, dref, idx[rows], wts[rows].astype(np.float64))
        assert np.linalg.norm(out - ref) <= 2e-3 * np.linalg.norm(ref)


def test_moe_scratch_covers_every_type():
    for T, k, D, I in [(1, 8, 2048, 768), (256, 8, 2048, 768), (3, 2, 32, 64), (1, 1, 1, 1)]:
        n = K.moe_scratch_floats(T, k, D, I)
        P = T * k
        quant_rows = (P if T > 1 else 1) * (D + D // 4) + P * I + P * (I + I // 4)
        assert n * 4 >= quant_rows + 8 * P


# ---- q4p: q4 in panels of 16 rows -------------------------------------------------------------


def test_q4p_layout():
    # one byte and one scale found where quant's docstring (and moecc.h) put them
    rng = np.random.default_rng(0)
    N, Kd = 48, 96
    rows = quant.quantize(rng.standard_normal((N, Kd)).astype(np.float32), "q4")
    flat = quant.to_panels(rows, Kd).reshape(-1)
    rb = storage.get("q4").row_bytes(Kd)
    panel, block, chunk, row, byte = 1, 2, 3, 5, 1
    at = panel * 16 * rb + block * 288 + chunk * 64 + row * 4 + byte
    assert flat[at] == rows[16 * panel + row, 18 * block + 2 + 4 * chunk + byte]  # after d
    at = panel * 16 * rb + block * 288 + 256 + 2 * row
    assert flat[at:at + 2].tobytes() == rows[16 * panel + row, 18 * block:18 * block + 2].tobytes()
    assert np.array_equal(quant.from_panels(quant.to_panels(rows, Kd), Kd), rows)


@pytest.mark.parametrize("T", [1, 2, 3, 4, 5, 9, 70])
@pytest.mark.parametrize("N,Kd", [(16, 32), (48, 96), (160, 768), (32, 2048)])
def test_q4p_matmul(isa, threads, T, N, Kd):
    check_matmul(np.random.default_rng(T * 100 + N + Kd), threads, "q4p", T, N, Kd)


def test_q4p_extremes(isa):
    # nibbles 0 and 15 against activations of +-127: no int16 saturation in maddubs
    rng = np.random.default_rng(1)
    N, Kd, T = 32, 128, 3
    w = quant.to_panels(extreme_rows(rng, "q4", N, Kd), Kd)
    wref = quant.dequantize(w, "q4p", Kd).astype(np.float64)
    x = rng.choice(np.array([-1.0, 1.0], np.float32), (T, Kd)) * np.float32(5)
    out = np.empty((T, N), np.float32)
    K.matmul(x, w, out, threads=1, storage="q4p")
    xq = xq_values(x)
    assert_matches(out, xq @ wref.T, np.abs(xq) @ np.abs(wref).T)


@pytest.mark.parametrize("T,E,k,D,I", [(1, 8, 8, 64, 96), (1, 4, 3, 32, 32), (1, 1, 1, 64, 32),
                                       (5, 6, 3, 96, 64), (17, 8, 2, 32, 160)])
def test_q4p_moe_ffn(isa, threads, T, E, k, D, I):
    check_moe_ffn(threads, "q4p", T, E, k, D, I)


def test_q4p_errors():
    rows = quant.quantize(np.ones((24, 64), np.float32), "q4")
    x, out = np.ones((1, 64), np.float32), np.empty((1, 24), np.float32)
    with pytest.raises(ValueError, match="multiple of 16 rows"):
        K.matmul(x, rows, out, threads=1, storage="q4p")
    table = quant.quantize(np.ones((16, 64), np.float32), "q4p")
    with pytest.raises(ValueError, match="cannot be looked up"):  # a panel's rows are not contiguous
        K.embedding(table, np.zeros(1, np.int32), np.empty((1, 64), np.float32), threads=1, storage="q4p")
    with pytest.raises(ValueError, match="multiple of 16 rows"):
        quant.quantize(np.ones((24, 64), np.float32), "q4p")


# ---- errors ----------------------------------------------------------------------------------


def test_errors_matmul():
    x, out = np.zeros((2, 64), np.float32), np.zeros((2, 3), np.float32)
    w8 = np.zeros((3, storage.get("q8").row_bytes(64)), np.uint8)
    K.matmul(x, w8, out, threads=1, storage="q8")
    with pytest.raises(ValueError, match=r"shape \(3, 68\).*got shape \(3, 67\)"):
        K.matmul(x, w8[:, :-1].copy(), out, threads=1, storage="q8")
    with pytest.raises(ValueError, match=r"\(3, 36\)"):
        K.matmul(x, w8, out, threads=1, storage="q4")  # q4 rows are 36 bytes
    with pytest.raises(ValueError, match="blocks of 32 values, which do not divide the row length 48"):
        K.matmul(np.zeros((2, 48), np.float32), w8, out, threads=1, storage="q8")
    with pytest.raises(TypeError, match="uint8"):
        K.matmul(x, w8.view(np.int8), out, threads=1, storage="q8")
    with pytest.raises(TypeError, match="storage= one of 'q8', 'q4', 'q4p'"):
        K.matmul(x, w8, out, threads=1)
    with pytest.raises(ValueError, match="unknown storage type 'q5'"):
        K.matmul(x, w8, out, threads=1, storage="q5")
    with pytest.raises(TypeError, match="float32 for storage 'f32'"):
        K.matmul(x, w8, out, threads=1, storage="f32")
    # explicit f32 / bf16 / f16 still work
    K.matmul(x, np.zeros((3, 64), np.float32), out, threads=1, storage="f32")
    K.matmul(x, np.zeros((3, 64), np.uint16), out, threads=1, storage="bf16")
    K.matmul(x, np.zeros((3, 64), np.float16), out, threads=1, storage="f16")


def test_errors_embedding():
    table = np.zeros((10, storage.get("q4").row_bytes(64)), np.uint8)
    K.embedding(table, np.array([1], np.int32), np.zeros((1, 64), np.float32), threads=1, storage="q4")
    with pytest.raises(ValueError, match="got shape"):
        K.embedding(table, np.array([1], np.int32), np.zeros((1, 128), np.float32), threads=1,
                    storage="q4")
    with pytest.raises(ValueError, match="ids out of range"):
        K.embedding(table, np.array([10], np.int32), np.zeros((1, 64), np.float32), threads=1,
                    storage="q4")


def test_errors_moe():
    T, E, k, D, I = 2, 4, 2, 64, 96
    rb = storage.get("q8").row_bytes
    args = dict(
        x=np.zeros((T, D), np.float32),
        gate=np.zeros((E, I, rb(D)), np.uint8),
        up=np.zeros((E, I, rb(D)), np.uint8),
        down=np.zeros((E, D, rb(I)), np.uint8),
        idx=np.zeros((T, k), np.int32), weights=np.zeros((T, k), np.float32),
        scratch=np.zeros(K.moe_scratch_floats(T, k, D, I), np.float32),
        out=np.zeros((T, D), np.float32),
    )

    def call(kind="q8", **changes):
        a = dict(args, **changes)
        K.moe_ffn(a["x"], a["gate"], a["up"], a["down"], a["idx"], a["weights"], a["scratch"],
                  a["out"], threads=1, storage=kind)

    call()
    with pytest.raises(ValueError, match=r"down must have shape \(4, 64, 102\)"):
        call(down=np.zeros((E, D, rb(D)), np.uint8))
    with pytest.raises(ValueError, match="up must have shape"):
        call(up=np.zeros((E, I, storage.get("q4").row_bytes(D)), np.uint8))
    with pytest.raises(TypeError, match="share a dtype"):
        call(up=np.zeros((E, I, D), np.float32))
    with pytest.raises(TypeError, match="storage= one of 'q8', 'q4', 'q4p'"):
        call(kind=None)
    with pytest.raises(ValueError, match="idx out of range"):
        call(idx=np.array([[0, 4], [1, 2]], np.int32))
