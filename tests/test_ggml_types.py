"""The ggml types moecc reads from GGUF files: the K types (q4_k, q5_k, q6_k; test_kquant.py
tests moecc's quantizers of them) and the blocks of 32 q4_1, q5_0, q5_1, which moecc does not
write. The NumPy oracle (moecc.quant) against the gguf package's own dequantizer, and every kernel path (decode GEMV, prefill GEMM, the MoE SwiGLU, embedding
lookup) against the oracle, on every ISA this machine has, 1 and 2 threads.

K-type weights meet q8_k activations (int8 per block of 256, a float scale, sums per 16), the
others q8_32 ones (per 32, sums per 32), with exact integer sums per block, so the reference for
a product is

    ref = dequantize(w) @ dequantize(quantize_activations(x, block=32 or 256))      (float64)

which the kernels must meet to float32 rounding (|got - ref| <= RTOL * (|xq| @ |w|)). The K-type
weights here are random valid super-blocks, the others what gguf's quantizer makes of random
values.
"""
import functools

import numpy as np
import pytest
from gguf import GGMLQuantizationType, quants

import moecc.loader
from moecc import _kernels as K
from moecc import quant, storage

KTYPES = ["q4_k", "q5_k", "q6_k"]
TYPES32 = ["q4_1", "q5_0", "q5_1"]
QK = storage.KBLOCK
RTOL = 1e-5
D_AT = {"q4_k": (0, 2), "q5_k": (0, 2), "q6_k": (208,)}  # byte offsets of the fp16 super-block scales


def random_rows(rng, name, shape, scale=1.0):
    """(uint8 rows [..., N, row_bytes] of random blocks of `name`, their values float64): K types
    every byte random but the fp16 scales, which are of magnitude ~ scale / (max q * max
    sub-scale) so that the weights are of magnitude ~ scale; the others gguf's quantization of
    normal values of that scale."""
    *lead, Kd = shape
    if name in TYPES32:
        w = (rng.standard_normal(shape) * scale).astype(np.float32)
        rows = quants.quantize(w, GGMLQuantizationType[name.upper()])
        return rows, quant.dequantize(rows, name, Kd).astype(np.float64)
    st = storage.get(name)
    nb = Kd // QK
    raw = rng.integers(0, 256, (*lead, nb, st.block_bytes), dtype=np.uint8)
    unit = scale / {"q4_k": 15 * 63, "q5_k": 31 * 63, "q6_k": 32 * 128}[name]
    for at in D_AT[name]:
        d = (rng.uniform(0.5, 2.0, (*lead, nb)) * unit).astype(np.float16)
        raw[..., at:at + 2] = d.view(np.uint8).reshape(*lead, nb, 2)
    rows = raw.reshape(*lead, nb * st.block_bytes)
    return rows, quant.dequantize(rows, name, Kd).astype(np.float64)


def act_block(name):
    """values per block of the activations weights of type `name` read"""
    return {"q8_32": 32, "q8_k": QK}[storage.get(name).activations]


def act_values(x, name):
    """x as the tiles of `name` see it: quantized per block of 32 or 256, as float64 (exact)."""
    block = act_block(name)
    q, d = quant.quantize_activations(x, block=block)
    T, Kd = x.shape
    return (q.reshape(T, -1, block).astype(np.float64) * d[..., None]).reshape(T, Kd)


def assert_matches(got, ref, magnitude, rtol=RTOL):
    err = np.abs(got.astype(np.float64) - ref)
    worst = np.unravel_index(np.argmax(err - rtol * magnitude), err.shape)
    assert np.all(err <= rtol * magnitude + 1e-30), (
        f"at {worst}: got {got[worst]}, ref {ref[worst]}, bound {rtol * magnitude[worst]}")


# ---- the oracle ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", KTYPES + TYPES32)
def test_dequantize_is_ggufs(name):
    # every byte random, the scales too (subnormal, inf and NaN fp16 included): bit for bit
    rng = np.random.default_rng(1)
    st = storage.get(name)
    raw = rng.integers(0, 256, (8, 512 * st.block_bytes), dtype=np.uint8)
    with np.errstate(over="ignore", invalid="ignore"):
        expected = quants.dequantize(raw, GGMLQuantizationType[name.upper()])
        got = quant.dequantize(raw, name, 512 * st.block_values)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name", TYPES32)
def test_dequantize_ggufs_quantization(name):
    # the blocks gguf's quantizer makes (values of every magnitude, a zero row): bit for bit, and
    # within a step of what they came from
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((16, 512)) * 10.0 ** rng.uniform(-4, 4, (16, 1))).astype(np.float32)
    x[3] = 0
    qtype = GGMLQuantizationType[name.upper()]
    rows = quants.quantize(x, qtype)
    got = quant.dequantize(rows, name, 512)
    np.testing.assert_array_equal(got, quants.dequantize(rows, qtype))
    blocks = x.reshape(16, -1, 32)
    span = blocks.max(-1, keepdims=True) - np.minimum(blocks.min(-1, keepdims=True), 0)
    step = np.abs(blocks).max(-1, keepdims=True) * 2 / (16 if name == "q4_1" else 32) + span / 15
    assert np.all(np.abs(got.reshape(blocks.shape) - blocks) <= step)


def test_q4_k_scales_by_hand():
    # sub-blocks 0..3: the low 6 bits of bytes 0..3 (scales) and 4..7 (mins); 4..7: the nibbles
    # of bytes 8..11 (scale low, min high) topped by the upper 2 bits of bytes 0..3 / 4..7
    packed = np.array([0b11_000001, 2, 3, 0b01_000100, 0b10_000101, 6, 7, 8,
                       0x9A, 0x00, 0xFF, 0x31], np.uint8)
    scales, mins = quant.q4_k_scales(packed)
    assert scales.tolist() == [1, 2, 3, 4, 0x0A | 3 << 4, 0, 0x0F, 0x01 | 1 << 4]
    assert mins.tolist() == [5, 6, 7, 8, 0x09 | 2 << 4, 0, 0x0F, 0x03]


def test_layout_by_hand():
    # a value set where the docstring puts it: q4_k value 64c + 32 + l is the high nibble of
    # qs[32c + l]; q6_k value 128h + 32i + l takes ql[64h + 32 (i % 2) + l], qh[32h + l] bits 2i..
    blk = np.zeros(144, np.uint8)
    blk[0:2] = np.array([1], np.float16).view(np.uint8)
    blk[4] = 1  # sub-block 0 scale 1
    blk[5] = 1  # sub-block 1 scale 1
    blk[16 + 7] = 0x50  # value 32 + 7 (sub-block 1): nibble 5
    w = quant.dequantize(blk[None], "q4_k", 256)[0]
    assert w[39] == 5 and np.count_nonzero(w) == 1
    # q5_k: value 64c + 32 + l adds 16 if bit 2c + 1 of qh[l] is set (qs after qh, at 48)
    blk = np.zeros(176, np.uint8)
    blk[0:2] = np.array([1], np.float16).view(np.uint8)
    blk[4 + 3] = 1  # sub-block 3 scale 1 (the scales start at byte 4)
    blk[48 + 32 + 2] = 0x30  # value 64 + 32 + 2: nibble 3
    blk[16 + 2] = 1 << 3
    w = quant.dequantize(blk[None], "q5_k", 256)[0]
    assert w[98] == 19 and np.count_nonzero(w) == 1
    blk = np.zeros(210, np.uint8)
    blk[208:210] = np.array([1], np.float16).view(np.uint8)
    blk[192:208] = 1
    h, i, l = 1, 3, 5
    blk[64 * h + 32 * (i % 2) + l] = 0xA0  # high nibble (i >= 2): 10
    blk[128 + 32 * h + l] = 0b10 << (2 * i)  # upper bits 2: q = 10 + 32 - 32
    w = quant.dequantize(blk[None], "q6_k", 256)[0]
    assert w[128 * h + 32 * i + l] == 10 and np.count_nonzero(w == -32) == 255


@pytest.mark.parametrize("name", TYPES32)
def test_no_quantizer(name):
    with pytest.raises(storage.StorageError, match=f"reads {name} .from GGUF files. but has no quantizer"):
        quant.quantize(np.zeros((1, 256), np.float32), name)


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
    xq = act_values(x, name)
    assert_matches(out, xq @ wref.T, np.abs(xq) @ np.abs(wref).T)
    return out, x, wref


# (N, K / block): odd N and every number of tile rows left over; blocks of 32 also ending
# anywhere in a step of 16 blocks or half of one (qdot_x86.c)
SHAPES = {"k": [(1, 1), (3, 2), (5, 3), (4, 1), (13, 2), (6, 5)],
          "32": [(1, 1), (3, 2), (5, 7), (4, 16), (13, 17), (6, 33)]}


@pytest.mark.parametrize("name", KTYPES + TYPES32)
@pytest.mark.parametrize("T", [1, 2, 5, 17])
@pytest.mark.parametrize("shape", range(6))
def test_matmul(isa, threads, name, T, shape):
    N, nb = SHAPES["k" if name in KTYPES else "32"][shape]
    block = storage.get(name).block_values
    rng = np.random.default_rng(T * 1000 + N * 10 + nb)
    out, x, wref = check_matmul(rng, threads, name, T, N, block * nb)
    # against the float product with x itself, the activation quantization error alone: each
    # value within half a step of its block's scale
    half_step = np.repeat(quant.quantize_activations(x, block=block)[1], block, axis=-1) / 2
    exact = x.astype(np.float64) @ wref.T
    assert np.all(np.abs(out - exact) <= half_step @ np.abs(wref).T * (1 + 1e-4))


@pytest.mark.parametrize("name", KTYPES + TYPES32)
@pytest.mark.parametrize("T,Kd,N", [(70, 1024, 37), (1, 12288, 9), (3, 512, 300)])
def test_matmul_large(isa, threads, name, T, Kd, N):
    # 70 tokens: more than one token block; K = 12288: a decode row too long for the stack
    check_matmul(np.random.default_rng(T + Kd + N), threads, name, T, N, Kd)


def extreme_rows(rng, name, N, nb):
    """Rows whose products are at the ends of the int16 / int32 ranges: every quant at its
    largest or smallest (q4_k, q4_1: nibbles 0 / 15; q5_k, q5_0, q5_1: 0 / 31; q6_k: 0 / 63),
    sub-block scales and mins at their ends (q4_k, q5_k 63; q6_k -128 / 127), d = dmin = m = 1;
    row 0 all of the largest."""
    bb = storage.get(name).block_bytes
    blk = np.zeros((N, nb, bb), np.uint8)
    one = np.array([1], np.float16).view(np.uint8)
    if name in TYPES32:  # d (and m) 1, then every other byte (qh, qs) all ones or all zeros
        start = 2 if name == "q5_0" else 4
        blk[..., 0:2] = one
        if name != "q5_0":
            blk[..., 2:4] = one  # m
        blk[..., start:] = rng.choice(np.array([0x00, 0xFF], np.uint8), (N, nb, bb - start))
        blk[0, :, start:] = 0xFF
    elif name in ("q4_k", "q5_k"):
        blk[..., 0:2] = blk[..., 2:4] = one
        blk[..., 4:16] = 0xFF  # every scale and min 63
        blk[..., 16:bb] = rng.choice(np.array([0x00, 0xFF], np.uint8), (N, nb, bb - 16))  # q5_k: qh too
        blk[0, :, 16:bb] = 0xFF
    else:
        blk[..., 208:210] = one
        blk[..., 0:192] = rng.choice(np.array([0x00, 0xFF], np.uint8), (N, nb, 192))
        blk[..., 192:208] = rng.choice(np.array([0x80, 0x7F], np.uint8), (N, nb, 16))
        blk[0, :, 0:192] = 0xFF
    return blk.reshape(N, nb * bb)


@pytest.mark.parametrize("name", KTYPES + TYPES32)
@pytest.mark.parametrize("nb", [1, 4, 17])
@pytest.mark.parametrize("T", [1, 3, 11])
def test_matmul_extremes(isa, threads, name, nb, T):
    # every weight and activation at the ends of its range (activations +-127): no saturation,
    # on each path of the tiles (one token: four rows at a time and one; three: the register
    # blocks; eleven: 16 rows unpacked into a panel (gpanel_x86.h), and the rows left over)
    rng = np.random.default_rng(nb)
    block = storage.get(name).block_values
    N, Kd = 19, block * nb
    w = extreme_rows(rng, name, N, nb)
    wref = quant.dequantize(w, name, Kd).astype(np.float64)
    x = rng.choice(np.array([-1.0, 1.0], np.float32), (T, Kd)) * np.float32(5)
    x[0] = 5.0
    out = np.empty((T, N), np.float32)
    K.matmul(x, w, out, threads=threads, storage=name)
    assert np.all(np.abs(quant.quantize_activations(x, block=block)[0]) == 127)
    xq = act_values(x, name)
    assert_matches(out, xq @ wref.T, np.abs(xq) @ np.abs(wref).T)


# ---- embedding -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", KTYPES + TYPES32)
def test_embedding(isa, threads, name):
    rng = np.random.default_rng(2)
    D = 2 * QK
    table, _ = random_rows(rng, name, (50, D))
    ids = np.concatenate([[0, 49, 3, 3, 17], rng.integers(0, 50, 60)]).astype(np.int32)
    out = np.empty((len(ids), D), np.float32)
    K.embedding(table, ids, out, threads=threads, storage=name)
    ref = quant.dequantize(table[ids], name, D)
    # ggml's float32 order of operations; a compiler may fuse (d * scale) * q - dmin * min (or
    # q * d + m)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())


# ---- moe_ffn -------------------------------------------------------------------------------------


def silu(z):
    return z / (1 + np.exp(-z))


def stored(rng, name, shape, scale):
    if name in KTYPES + TYPES32:
        return random_rows(rng, name, shape, scale)
    w = quant.quantize((rng.standard_normal(shape) * scale).astype(np.float32), name)
    return w, quant.dequantize(w, name, shape[-1]).astype(np.float64)


@functools.lru_cache(maxsize=None)
def moe_case(gate_up, down, T, E, k):
    """The inputs of a moe_ffn call and the reference result, made once for every ISA and thread
    count: x [T, D], gate, up [E, I, D] of gate_up, down [E, D, I] of down, idx and wts [T, k],
    ref [T, D] (SwiGLU experts on the dequantized weights, the activations quantized where the
    kernel quantizes them: x before gate / up, h before down)."""
    D, I = 256, 256
    rng = np.random.default_rng(T * 100 + E * 10 + k)
    x = rng.standard_normal((T, D)).astype(np.float32)
    gate, gref = stored(rng, gate_up, (E, I, D), D**-0.5)
    up, uref = stored(rng, gate_up, (E, I, D), D**-0.5)
    dw, dref = stored(rng, down, (E, D, I), I**-0.5)
    idx = np.stack([rng.permutation(E)[:k] for _ in range(T)]).astype(np.int32)
    wts = rng.random((T, k)).astype(np.float32)
    ref = np.zeros((T, D))
    xq = act_values(x, gate_up)
    for t in range(T):
        for j in range(k):
            e = idx[t, j]
            h = silu(gref[e] @ xq[t]) * (uref[e] @ xq[t])
            ref[t] += wts[t, j] * (dref[e] @ act_values(h.astype(np.float32)[None], down)[0])
    return x, gate, up, dw, idx, wts, ref


@pytest.mark.parametrize("gate_up,down", [("q4_k", "q6_k"), ("q6_k", "q4_k"), ("q5_k", "q6_k"), ("q4_k", "q8"),
                                          ("q4", "q5_k"), ("q5_0", "q8"), ("q5_1", "q5_0"), ("q4_1", "q6_k")])
@pytest.mark.parametrize("T,E,k", [(1, 8, 8), (1, 6, 3), (17, 8, 2)])  # decode by expert, by rows; prefill
def test_moe_ffn(isa, threads, gate_up, down, T, E, k):
    # a layer's down projection in another type than gate and up, of the same activation kind or
    # not (a Q4_K_M file's experts are q4_k with q6_k down in half the layers)
    x, gate, up, dw, idx, wts, ref = moe_case(gate_up, down, T, E, k)
    scratch = np.empty(K.moe_scratch_floats(T, k, *x.shape[1:], gate.shape[1]), np.float32)
    out = np.full(x.shape, np.nan, np.float32)
    K.moe_ffn(x, gate, up, dw, idx, wts, scratch, out, threads=threads, storage=gate_up, down_storage=down)
    # h is quantized from the kernel's float32 values: a value on a rounding edge may land one
    # step away from the reference's
    err = np.abs(out - ref)
    assert np.linalg.norm(err) <= 2e-3 * np.linalg.norm(ref)
    assert err.max() <= 1e-2 * np.abs(ref).max()


# ---- the forward step ----------------------------------------------------------------------------

# A mix as GGUF files have them (Q4_K_M: q4_k with q6_k for v, down and the output), and types of
# both activation kinds within a layer: layer 0's q, k and v share one q8_k quantization, layer 1's
# k and v each need their own (forward.c compares the kinds).
MIXED = {"model.embed_tokens.weight": "q6_k", "lm_head.weight": "q6_k",
         "model.layers.0.self_attn.q_proj.weight": "q4_k", "model.layers.0.self_attn.k_proj.weight": "q4_k",
         "model.layers.0.self_attn.v_proj.weight": "q6_k", "model.layers.0.self_attn.o_proj.weight": "q5_k",
         "model.layers.0.mlp.experts.gate_proj": "q4_k", "model.layers.0.mlp.experts.up_proj": "q4_k",
         "model.layers.0.mlp.experts.down_proj": "q6_k",
         "model.layers.1.self_attn.q_proj.weight": "q8", "model.layers.1.self_attn.k_proj.weight": "q4_k",
         "model.layers.1.self_attn.v_proj.weight": "q5_0", "model.layers.1.self_attn.o_proj.weight": "q4_1",
         "model.layers.1.mlp.gate_proj.weight": "q5_1", "model.layers.1.mlp.up_proj.weight": "q5_1",
         "model.layers.1.mlp.down_proj.weight": "q4_k"}


@functools.lru_cache(maxsize=None)
def mixed_weights(path):
    """The `main` fixture's tensors with those of MIXED replaced by random blocks of their types
    (of the originals' spread), and the same values as f32: (mixed, float) weight dicts."""
    from moecc.model import Weight
    source = moecc.loader.open_model(path)
    rng = np.random.default_rng(12)
    mixed, floats = dict(source.weights), dict(source.weights)
    for name, kind in MIXED.items():
        original = np.asarray(source.weights[name].data, np.float32)
        rows, values = stored(rng, kind, original.shape, 1.7 * float(original.std()))
        mixed[name] = Weight(rows, kind)
        floats[name] = Weight(values.astype(np.float32), "f32")
    return source.config, mixed, floats


def test_forward_with_mixed_types(isa, converted):
    # the step on weights of six types against the float step on the same values: apart only by
    # the quantization of the activations, prefill (one step of 24 rows) and decode (row by row)
    from moecc.model import Buffers, KVCache, Transformer
    cfg, mixed, floats = mixed_weights(converted("main", "f32"))
    assert set(MIXED) <= set(mixed), "MIXED names tensors of the main fixture"
    tokens = np.random.default_rng(3).integers(0, cfg.vocab_size, 24).astype(np.int32)
    results = []
    for weights in (mixed, floats):
        net = Transformer(cfg, weights, Buffers(cfg, 32), KVCache(cfg, 2, 64, "f32"), threads=2)
        prefill = np.empty((24, cfg.vocab_size), np.float32)
        net.forward(tokens, np.zeros(24, np.int32), np.arange(24, dtype=np.int32), np.arange(24, dtype=np.int32),
                    prefill)
        decode = np.empty((24, cfg.vocab_size), np.float32)
        for t in range(24):
            net.forward(tokens[t:t + 1], np.ones(1, np.int32), np.array([t], np.int32), np.zeros(1, np.int32),
                        decode[t:t + 1])
        results.append((prefill, decode))
    (prefill, decode), (float_prefill, float_decode) = results
    centred = np.linalg.norm(float_prefill - float_prefill.mean(-1, keepdims=True))
    np.testing.assert_allclose(float_decode, float_prefill, rtol=0, atol=1e-4 * np.abs(float_prefill).max())
    # decode and prefill sum in other orders: an activation on a rounding edge may quantize one
    # step apart
    assert np.linalg.norm(decode - prefill) <= 2e-3 * centred
    assert np.linalg.norm(prefill - float_prefill) <= 0.05 * centred
