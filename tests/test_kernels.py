"""The compiled kernels against NumPy references, on every ISA this machine has, 1 and 2 threads.

References are float64 on the exact weights the kernel sees (bf16 weights are widened exactly).
Tolerances: float32 accumulation, so errors are bounded relative to the magnitude of the terms
summed (sum |x_k w_k|), not to the result, which can cancel to ~0:
    |got - ref| <= RTOL * magnitude + ATOL.
"""
import functools
import os
import subprocess
import sys

import numpy as np
import pytest

from moecc import _kernels as K
from moecc import quant

RTOL = 1e-5
ATOL = 1e-6
WDTYPES = ["f32", "bf16", "f16"]


# ---- helpers ----------------------------------------------------------------------------------




to_bf16, from_bf16 = quant.f32_to_bf16, quant.bf16_to_f32


def weights(rng, shape, wdtype, scale=1.0):
    """(array for the kernel, its exact value as float64)."""
    w = (rng.standard_normal(shape) * scale).astype(np.float32)
    if wdtype == "bf16":
        h = to_bf16(w)
        return h, from_bf16(h).astype(np.float64)
    if wdtype == "f16":
        h = w.astype(np.float16)
        return h, h.astype(np.float64)
    return w, w.astype(np.float64)


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def assert_close(got, ref, magnitude, rtol=RTOL, atol=ATOL):
    err = np.abs(got.astype(np.float64) - ref)
    bound = rtol * magnitude + atol
    worst = np.unravel_index(np.argmax(err - bound), err.shape) if err.size else None
    assert np.all(err <= bound), (
        f"max excess at {worst}: got {got[worst]}, ref {ref[worst]}, bound {bound[worst]}"
    )


# ---- build info and dispatch -----------------------------------------------------------------


def test_build_info():
    info = K.build_info()
    assert set(info) == {"openmp", "isa_compiled", "isa_available", "isa", "max_threads"}
    assert info["isa_compiled"][0] == "generic"
    assert set(info["isa_available"]) <= set(info["isa_compiled"])
    assert info["isa"] in info["isa_available"] and info["max_threads"] >= 1


def test_set_isa_rejects_unknown():
    with pytest.raises(ValueError, match="unknown ISA"):
        K.set_isa("sse9")


def test_set_isa_roundtrip(isa):
    assert K.get_isa() == isa


@pytest.mark.parametrize("value", ["generic", "bogus"])
def test_env_var_forces_isa(value):
    code = "import moecc._kernels as K; print(K.get_isa())"
    env = dict(os.environ, MOECC_ISA=value)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if value == "bogus":
        assert r.returncode != 0 and "MOECC_ISA='bogus'" in r.stderr
    else:
        assert r.returncode == 0 and r.stdout.strip() == value


# ---- matmul ----------------------------------------------------------------------------------


@pytest.mark.parametrize("wdtype", WDTYPES)
@pytest.mark.parametrize("T", [1, 2, 3, 5, 7, 17])
@pytest.mark.parametrize("Kd,N", [(1, 1), (7, 33), (33, 7), (129, 65), (256, 40)])
def test_matmul(isa, threads, wdtype, T, Kd, N):
    rng = np.random.default_rng(T * 1000 + Kd * 7 + N)
    x = randn(rng, T, Kd)
    w, wref = weights(rng, (N, Kd), wdtype)
    out = np.full((T, N), np.nan, np.float32)
    K.matmul(x, w, out, threads=threads)
    x64 = x.astype(np.float64)
    assert_close(out, x64 @ wref.T, np.abs(x64) @ np.abs(wref).T)


@pytest.mark.parametrize("wdtype", WDTYPES)
def test_matmul_several_token_blocks(isa, threads, wdtype):
    rng = np.random.default_rng(1)
    x = randn(rng, 70, 1000)  # 64 tokens per block at K=1000: two blocks
    w, wref = weights(rng, (37, 1000), wdtype)
    out = np.empty((70, 37), np.float32)
    K.matmul(x, w, out, threads=threads)
    x64 = x.astype(np.float64)
    assert_close(out, x64 @ wref.T, np.abs(x64) @ np.abs(wref).T)


# ---- embedding -------------------------------------------------------------------------------


@pytest.mark.parametrize("wdtype", WDTYPES)
@pytest.mark.parametrize("D", [1, 33, 300])
def test_embedding(threads, wdtype, D):
    rng = np.random.default_rng(D)
    table, ref = weights(rng, (50, D), wdtype)
    ids = np.concatenate([[0, 49, 3, 3, 17], rng.integers(0, 50, 100)]).astype(np.int32)
    out = np.empty((len(ids), D), np.float32)
    K.embedding(table, ids, out, threads=threads)
    np.testing.assert_array_equal(out, ref[ids].astype(np.float32))


# ---- rmsnorm ---------------------------------------------------------------------------------


@pytest.mark.parametrize("R", [1, 5, 17])
@pytest.mark.parametrize("D", [1, 7, 33, 129, 2048])
@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
def test_rmsnorm(threads, R, D, inplace):
    rng = np.random.default_rng(R * D)
    x = randn(rng, R, D) * 3
    w = randn(rng, D)
    x64 = x.astype(np.float64)
    ref = x64 / np.sqrt(np.mean(x64**2, axis=1, keepdims=True) + 1e-6) * w
    out = x if inplace else np.empty_like(x)
    K.rmsnorm(x, w, 1e-6, out, threads=threads)
    assert_close(out, ref, np.abs(ref), rtol=1e-5)


# ---- rope ------------------------------------------------------------------------------------


def rope_tables(P, hd, theta=1e6):
    inv = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.arange(P, dtype=np.float64)[:, None] * inv[None, :]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


@pytest.mark.parametrize("T,H", [(1, 4), (5, 3), (17, 2), (33, 8)])
@pytest.mark.parametrize("hd", [2, 16, 64, 128])
def test_rope(threads, T, H, hd):
    rng = np.random.default_rng(T * hd)
    x = randn(rng, T, H, hd)
    pos = rng.integers(0, 300, T).astype(np.int32)
    cos, sin = rope_tables(300, hd)
    c, s = cos[pos][:, None, :].astype(np.float64), sin[pos][:, None, :].astype(np.float64)
    x1, x2 = x[..., : hd // 2].astype(np.float64), x[..., hd // 2 :].astype(np.float64)
    ref = np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)
    K.rope(x, pos, cos, sin, threads=threads)
    assert_close(x, ref, np.abs(np.concatenate([x1, x2], -1)) * 2)


# ---- attention -------------------------------------------------------------------------------


def attention_ref(q, kc, vc, start):
    T, Hq, hd = q.shape
    g = Hq // kc.shape[0]
    out = np.empty((T, Hq, hd))
    for t in range(T):
        L = start + t + 1
        for h in range(Hq):
            kk, vv = kc[h // g, :L].astype(np.float64), vc[h // g, :L].astype(np.float64)
            s = kk @ q[t, h].astype(np.float64) / np.sqrt(hd)
            p = np.exp(s - s.max())
            out[t, h] = (p / p.sum()) @ vv
    return out


@pytest.mark.parametrize("kv_dtype", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("Hq,Hkv", [(4, 4), (4, 2), (8, 2)], ids=["mha", "gqa2", "gqa4"])
@pytest.mark.parametrize("hd", [16, 64, 72, 128])
@pytest.mark.parametrize("T,start", [(1, 0), (1, 200), (5, 0), (5, 37), (17, 100)])
def test_attention(isa, threads, Hq, Hkv, hd, T, start, kv_dtype):
    # an f16 cache is compared with the reference on the very values it holds
    rng = np.random.default_rng(Hq * hd + T * 7 + start)
    C = start + T + 3
    q = randn(rng, T, Hq, hd)
    kc = randn(rng, Hkv, C, hd).astype(kv_dtype)
    vc = randn(rng, Hkv, C, hd).astype(kv_dtype)
    out = np.full_like(q, np.nan)
    K.attention(q, kc, vc, np.arange(start, start + T, dtype=np.int32), out, threads=threads)
    assert_close(out, attention_ref(q, kc, vc, start), np.ones(out.shape), rtol=1e-5)


def test_attention_peaked_scores(isa, threads):
    # large logits: exp arguments from 0 down past the float32 underflow of exp (-87)
    rng = np.random.default_rng(7)
    q = randn(rng, 3, 4, 64) * 4
    kc, vc = randn(rng, 2, 150, 64) * 4, randn(rng, 2, 150, 64)
    out = np.empty_like(q)
    K.attention(q, kc, vc, np.arange(147, 150, dtype=np.int32), out, threads=threads)
    assert_close(out, attention_ref(q, kc, vc, 147), np.ones(out.shape), rtol=1e-5)


# The real models' geometry: Qwen3-30B-A3B has 32 query heads over 4 kv heads, Qwen3-235B-A22B
# 64 over 4, head_dim 128. The kernel takes a kv head's query heads 4 at a time, so these groups
# of 8 and 16 run as 2 and 4 chunks (and a group of 6 as a chunk of 4 and one of 2), cases the
# ratios above (1, 2, 4) never reach. Decode at the start, early, and far past several 64-key
# blocks; prefill of 37 tokens from position 5 and of 6 tokens across a block edge.
ATTN_GEOMETRY = [(32, 4), (64, 4), (12, 2)]
ATTN_STEPS = [(1, 0), (1, 20), (1, 300), (37, 5), (6, 250)]


@functools.lru_cache(maxsize=None)
def _attention_case(Hq, Hkv, T, start, kv_dtype):
    """(q, k cache, v cache, reference), made once for every ISA and thread count."""
    rng = np.random.default_rng(Hq * 1000 + T * 7 + start)
    C = start + T + 3
    q = randn(rng, T, Hq, 128)
    kc = randn(rng, Hkv, C, 128).astype(kv_dtype)
    vc = randn(rng, Hkv, C, 128).astype(kv_dtype)
    for a in (q, kc, vc):
        a.flags.writeable = False
    return q, kc, vc, attention_ref(q, kc, vc, start)


@pytest.mark.parametrize("kv_dtype", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("Hq,Hkv", ATTN_GEOMETRY, ids=["30b-gqa8", "235b-gqa16", "gqa6"])
@pytest.mark.parametrize("T,start", ATTN_STEPS,
                         ids=["decode0", "decode20", "decode300", "prefill37", "prefill6at250"])
def test_attention_model_geometry(isa, threads, Hq, Hkv, T, start, kv_dtype):
    q, kc, vc, ref = _attention_case(Hq, Hkv, T, start, kv_dtype)
    out = np.full(q.shape, np.nan, np.float32)
    K.attention(q, kc, vc, np.arange(start, start + T, dtype=np.int32), out, threads=threads)
    assert_close(out, ref, np.ones(out.shape), rtol=1e-5)


# ---- router ----------------------------------------------------------------------------------


def router_ref(logits, k, normalize):
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    idx = np.argsort(-p, axis=-1, kind="stable")[:, :k]
    w = np.take_along_axis(p, idx, -1)
    if normalize:
        w /= w.sum(-1, keepdims=True)
    return idx, w


@pytest.mark.parametrize("T", [1, 5, 17])
@pytest.mark.parametrize("E,k", [(1, 1), (8, 2), (60, 4), (128, 8), (33, 33)])
@pytest.mark.parametrize("normalize", [False, True])
def test_router_topk(threads, T, E, k, normalize):
    rng = np.random.default_rng(T * E + k)
    logits = randn(rng, T, E) * 3
    idx = np.empty((T, k), np.int32)
    w = np.empty((T, k), np.float32)
    K.router_topk(logits, k, normalize, idx, w, threads=threads)
    ref_idx, ref_w = router_ref(logits.astype(np.float64), k, normalize)
    np.testing.assert_array_equal(idx, ref_idx)
    assert_close(w, ref_w, np.abs(ref_w), rtol=1e-5)


def test_router_ties_lower_index_first(threads):
    logits = np.array([[1.0, 3.0, 2.0, 3.0, 2.0, 0.0]], np.float32)
    idx = np.empty((1, 4), np.int32)
    w = np.empty((1, 4), np.float32)
    K.router_topk(logits, 4, False, idx, w, threads=threads)
    assert idx.tolist() == [[1, 3, 2, 4]]
    assert w[0, 0] == w[0, 1] and w[0, 2] == w[0, 3]


# ---- moe_ffn ---------------------------------------------------------------------------------


def moe_ref(x, gate, up, down, idx, wts):
    out = np.zeros(x.shape)
    for t in range(x.shape[0]):
        for j in range(idx.shape[1]):
            e = idx[t, j]
            g, u = gate[e] @ x[t], up[e] @ x[t]
            out[t] += wts[t, j] * (down[e] @ (g / (1 + np.exp(-g)) * u))
    return out


def run_moe(rng, threads, wdtype, T, E, k, D, I, idx=None):
    x = randn(rng, T, D)
    gate, gref = weights(rng, (E, I, D), wdtype, scale=D**-0.5)
    up, uref = weights(rng, (E, I, D), wdtype, scale=D**-0.5)
    down, dref = weights(rng, (E, D, I), wdtype, scale=I**-0.5)
    if idx is None:
        idx = np.stack([rng.permutation(E)[:k] for _ in range(T)]).astype(np.int32)
    wts = rng.random((T, k)).astype(np.float32)
    scratch = np.empty(K.moe_scratch_floats(T, k, D, I) + 5, np.float32)
    out = np.full((T, D), np.nan, np.float32)
    K.moe_ffn(x, gate, up, down, idx, wts, scratch, out, threads=threads)
    ref = moe_ref(x.astype(np.float64), gref, uref, dref, idx, wts.astype(np.float64))
    assert_close(out, ref, np.full(ref.shape, np.abs(ref).max()), rtol=2e-5)


@pytest.mark.parametrize("wdtype", WDTYPES)
@pytest.mark.parametrize(
    "T,E,k,D,I",
    [
        (1, 8, 2, 33, 7),
        (1, 16, 4, 128, 96),
        (2, 4, 2, 7, 33),
        (5, 6, 3, 129, 17),
        (17, 8, 2, 64, 40),
        (33, 16, 4, 65, 31),
        (1, 1, 1, 33, 129),  # dense SwiGLU MLP
        (17, 1, 1, 64, 96),
    ],
)
def test_moe_ffn(isa, threads, wdtype, T, E, k, D, I):
    run_moe(np.random.default_rng(T * 100 + E * 10 + D), threads, wdtype, T, E, k, D, I)


@pytest.mark.parametrize("wdtype", WDTYPES)
def test_moe_ffn_routing_edge_cases(isa, threads, wdtype):
    # expert 0 and 5 get no tokens; expert 3 appears twice in one token's list; all tokens share 1
    idx = np.array([[1, 3, 3], [1, 2, 4], [4, 1, 2], [1, 3, 2], [2, 4, 1]], np.int32)
    run_moe(np.random.default_rng(5), threads, wdtype, 5, 6, 3, 20, 11, idx=idx)
    run_moe(np.random.default_rng(6), threads, wdtype, 1, 6, 3, 20, 11, idx=idx[:1])


# Each work split of moe.c, at Qwen3-30B-A3B-like proportions scaled down (k = 8 of 16 or 32
# experts, D = 256, I = 96) and one odd case (k = 6 of 20, D = 192, I = 320, groups of 64).
# Decode (T = 1) goes by expert when the thread count divides the T*k pairs, by rows of every
# expert otherwise; prefill always by rows (I and D cut in slices of 16 per thread: on 8 threads
# some of I's 6 slices are empty). Threads 1, 2, 3, 8 (more than the cores: fine for OpenMP):
#   decode k = 8: by expert on 1, 2, 8, by rows on 3;  k = 6: by expert on 1, 2, 3, by rows on 8.
MOE_THREADS = (1, 2, 3, 8)
MOE_SPLIT_CASES = [  # T, E, k, D, I
    (1, 32, 8, 256, 96),
    (7, 16, 8, 256, 96),
    (1, 20, 6, 192, 320),
    (3, 20, 6, 192, 320),
]


def xq_values(x):
    """x as q8 / q4 / q4p kernels see it: quantized per block of 32, as float64 (exact)."""
    q, d = quant.quantize_activations(x)
    T, Kd = x.shape
    return (q.reshape(T, -1, 32).astype(np.float64) * d[..., None]).reshape(T, Kd)


def moe_ref_quantized(x, gate, up, down, idx, wts):
    """moe_ref on dequantized weights, with the activations quantized where the kernel does:
    x before gate / up, h before down."""
    out = np.zeros(x.shape)
    xq = xq_values(x)
    for t in range(x.shape[0]):
        for j in range(idx.shape[1]):
            e = idx[t, j]
            g, u = gate[e] @ xq[t], up[e] @ xq[t]
            hq = xq_values((g / (1 + np.exp(-g)) * u).astype(np.float32)[None])[0]
            out[t] += wts[t, j] * (down[e] @ hq)
    return out


@functools.lru_cache(maxsize=None)
def _moe_case(wdtype, T, E, k, D, I):
    """(kernel arguments, storage type, reference, the reference as a function of the pairs'
    weights), made once for every ISA."""
    rng = np.random.default_rng(T * 1000 + E * 10 + k + D + I)
    x = randn(rng, T, D)
    shapes = {"gate": (E, I, D), "up": (E, I, D), "down": (E, D, I)}
    scales = {"gate": D**-0.5, "up": D**-0.5, "down": I**-0.5}
    quantized = wdtype in ("q8", "q4", "q4p")
    if quantized:
        stored, exact = {}, {}
        for name, shape in shapes.items():
            w = (rng.standard_normal(shape) * scales[name]).astype(np.float32)
            stored[name] = quant.quantize(w, wdtype)
            exact[name] = quant.dequantize(stored[name], wdtype, shape[-1]).astype(np.float64)
        ref_fn = moe_ref_quantized
    else:
        pairs = {n: weights(rng, s, wdtype, scale=scales[n]) for n, s in shapes.items()}
        stored = {n: p[0] for n, p in pairs.items()}
        exact = {n: p[1] for n, p in pairs.items()}
        ref_fn = moe_ref
    idx = np.stack([rng.permutation(E)[:k] for _ in range(T)]).astype(np.int32)
    wts = rng.random((T, k)).astype(np.float32)
    reference = functools.partial(ref_fn, x.astype(np.float64), exact["gate"], exact["up"], exact["down"], idx)
    args = (x, stored["gate"], stored["up"], stored["down"], idx, wts)
    for a in args:
        a.flags.writeable = False
    return args, (wdtype if quantized else None), reference(wts.astype(np.float64)), reference


def moe_close(got, ref, wdtype):
    """got against a reference (or another thread count's output) within the kernel's error:
    float32 rounding for float weights; for quantized ones a value of h on a rounding edge may
    land one step of its block away (as in test_quant_kernels)."""
    if wdtype in ("q8", "q4", "q4p"):
        err = np.abs(got.astype(np.float64) - ref)
        assert np.linalg.norm(err) <= 2e-3 * np.linalg.norm(ref), (
            f"||got - ref|| = {np.linalg.norm(err):.3g} > 2e-3 * ||ref|| = {np.linalg.norm(ref):.3g}")
        assert err.max() <= 1e-2 * np.abs(ref).max(), (
            f"max |got - ref| = {err.max():.3g} at {np.unravel_index(err.argmax(), err.shape)}, "
            f"> 1e-2 * max |ref| = {np.abs(ref).max():.3g}")
    else:
        assert_close(got, ref, np.full(ref.shape, np.abs(ref).max()), rtol=2e-5)


@pytest.mark.parametrize("wdtype", WDTYPES + ["q8", "q4", "q4p"])
@pytest.mark.parametrize("T,E,k,D,I", MOE_SPLIT_CASES,
                         ids=["decode-k8", "prefill-k8", "decode-k6-odd", "prefill-k6-odd"])
def test_moe_ffn_thread_splits(isa, wdtype, T, E, k, D, I):
    args, kind, ref, _ = _moe_case(wdtype, T, E, k, D, I)
    scratch = np.empty(K.moe_scratch_floats(T, k, D, I), np.float32)
    outs = {}
    for n in MOE_THREADS:
        out = np.full((T, D), np.nan, np.float32)
        K.moe_ffn(*args, scratch, out, threads=n, storage=kind)
        moe_close(out, ref, wdtype)
        outs[n] = out
    # the splits differ in the order of the sums over pairs only (h is the same: every slice of
    # I is whole tiles), so the thread counts agree to float32 rounding whatever the weights
    for n in MOE_THREADS[1:]:
        assert_close(outs[n], outs[1].astype(np.float64), np.full(ref.shape, np.abs(ref).max()),
                     rtol=2e-5)
    # by expert, each pair's output is one thread's and the pairs are summed in pair order: the
    # same bits whatever the thread count (moe.c)
    by_expert = [n for n in MOE_THREADS if T == 1 and k % n == 0]
    for n in by_expert[1:]:
        np.testing.assert_array_equal(outs[n], outs[1], err_msg=f"threads {n} vs 1, by expert")


@pytest.mark.parametrize("wdtype", WDTYPES + ["q8", "q4", "q4p"])
@pytest.mark.parametrize("T,E,k,D,I", MOE_SPLIT_CASES,
                         ids=["decode-k8", "prefill-k8", "decode-k6-odd", "prefill-k6-odd"])
@pytest.mark.parametrize("ranks", [2, 3])
def test_moe_ffn_expert_ranges(isa, threads, wdtype, T, E, k, D, I, ranks):
    """Expert parallelism: with the experts cut into contiguous ranges (as moecc.parallel cuts
    them), each range's output is the reference over the pairs routed into it alone (the others
    weigh 0), whether its pair count divides the threads or not, and the ranges add up to the
    whole layer."""
    from moecc.parallel import expert_range
    args, kind, ref, reference = _moe_case(wdtype, T, E, k, D, I)
    x, gate, up, down, idx, wts = args
    scratch = np.empty(K.moe_scratch_floats(T, k, D, I), np.float32)
    total = np.zeros((T, D), np.float64)
    for rank in range(ranks):
        begin, end = expert_range(E, rank, ranks)
        out = np.full((T, D), np.nan, np.float32)
        K.moe_ffn(*args, scratch, out, threads=threads, storage=kind, experts=(begin, end))
        mine = (idx >= begin) & (idx < end)
        moe_close(out, reference(np.where(mine, wts, 0).astype(np.float64)), wdtype)
        total += out
    moe_close(total, ref, wdtype)


def test_moe_ffn_refuses_a_range_outside_the_experts():
    args, kind, _, _ = _moe_case("f32", 1, 32, 8, 256, 96)
    scratch = np.empty(K.moe_scratch_floats(1, 8, 256, 96), np.float32)
    out = np.empty((1, 256), np.float32)
    for experts in [(0, 33), (-1, 4), (5, 5), (6, 2)]:
        with pytest.raises(ValueError, match=r"experts must be a range \(begin, end\) with 0 <= begin < end <= 32"):
            K.moe_ffn(*args, scratch, out, threads=1, storage=kind, experts=experts)


# ---- errors ----------------------------------------------------------------------------------


def f32(*shape):
    return np.zeros(shape, np.float32)


def test_errors_matmul():
    x, w, out = f32(2, 8), f32(4, 8), f32(2, 4)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        K.matmul(x.astype(np.float64), w, out, threads=1)
    with pytest.raises(TypeError, match="float32, uint16 .bf16 bits. or float16"):
        K.matmul(x, w.astype(np.float64), out, threads=1)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        K.matmul(x.tolist(), w, out, threads=1)
    with pytest.raises(ValueError, match="shape"):
        K.matmul(x, f32(4, 7), out, threads=1)
    with pytest.raises(ValueError, match="out must have shape"):
        K.matmul(x, w, f32(2, 5), threads=1)
    with pytest.raises(ValueError, match="C-contiguous"):
        K.matmul(f32(2, 16)[:, ::2], w, out, threads=1)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        K.matmul(x, w, out, threads=1)
    with pytest.raises(ValueError, match="threads"):
        K.matmul(x, w, f32(2, 4), threads=0)
    with pytest.raises(TypeError):
        K.matmul(x, w, f32(2, 4))  # threads is required


def test_errors_embedding_rope_router():
    table = f32(10, 4)
    for bad in ([10], [-1]):
        with pytest.raises(ValueError, match="ids out of range"):
            K.embedding(table, np.array(bad, np.int32), f32(1, 4), threads=1)
    with pytest.raises(TypeError, match="int32"):
        K.embedding(table, np.array([1], np.int64), f32(1, 4), threads=1)
    cos, sin = rope_tables(8, 4)
    with pytest.raises(ValueError, match="positions out of range"):
        K.rope(f32(1, 2, 4), np.array([8], np.int32), cos, sin, threads=1)
    with pytest.raises(ValueError, match="even"):
        K.rope(f32(1, 2, 5), np.array([0], np.int32), cos, sin, threads=1)
    with pytest.raises(ValueError, match="top_k"):
        K.router_topk(f32(1, 4), 5, True, np.zeros((1, 5), np.int32), f32(1, 5), threads=1)


def test_errors_attention():
    q, kc, out = f32(2, 4, 16), f32(2, 8, 16), f32(2, 4, 16)
    pos = np.array([0, 1], np.int32)
    with pytest.raises(ValueError, match=r"positions in \[0, 8\)"):
        K.attention(q, kc, kc, np.array([7, 8], np.int32), out, threads=1)
    with pytest.raises(ValueError, match=r"slots must be in \[0, 1\)"):
        K.attention(q, kc, kc, pos, out, threads=1, slots=np.array([0, 1], np.int32))
    with pytest.raises(ValueError, match="positions must have shape"):
        K.attention(q, kc, kc, pos[:1], out, threads=1)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        K.attention(f32(2, 3, 16), kc, kc, pos, f32(2, 3, 16), threads=1)
    with pytest.raises(ValueError, match="at most 16 per kv head"):
        K.attention(f32(2, 17, 16), f32(1, 8, 16), f32(1, 8, 16), pos, f32(2, 17, 16), threads=1)
    with pytest.raises(ValueError, match="head dim"):
        K.attention(q, f32(2, 8, 8), f32(2, 8, 8), pos, out, threads=1)
    with pytest.raises(ValueError, match="threads"):
        K.attention(q, kc, kc, pos, out, threads=-1)
    with pytest.raises(TypeError, match="float32 or float16"):
        K.attention(q, kc.astype(np.float64), kc, pos, out, threads=1)
    with pytest.raises(TypeError, match="v_cache must have dtype float16"):
        K.attention(q, kc.astype(np.float16), kc, pos, out, threads=1)


def test_attention_rows_of_different_slots_and_positions(isa, threads):
    # a batch mixing sequences: each row attends over its own slot up to its own position,
    # exactly as it would alone
    rng = np.random.default_rng(11)
    S, Hq, Hkv, hd, C = 3, 8, 2, 64, 90
    kc, vc = randn(rng, S, Hkv, C, hd), randn(rng, S, Hkv, C, hd)
    slots = np.array([2, 0, 2, 1, 0], np.int32)
    positions = np.array([70, 0, 3, 88, 41], np.int32)
    q = randn(rng, len(slots), Hq, hd)
    out = np.full_like(q, np.nan)
    K.attention(q, kc, vc, positions, out, threads=threads, slots=slots)
    for t, (s, p) in enumerate(zip(slots, positions)):
        ref = attention_ref(q[t:t + 1], kc[s], vc[s], p)
        assert_close(out[t:t + 1], ref, np.ones(ref.shape), rtol=1e-5)


def test_errors_moe():
    T, E, k, D, I = 2, 4, 2, 8, 6
    args = dict(
        x=f32(T, D), gate=f32(E, I, D), up=f32(E, I, D), down=f32(E, D, I),
        idx=np.zeros((T, k), np.int32), weights=f32(T, k),
        scratch=f32(K.moe_scratch_floats(T, k, D, I)), out=f32(T, D),
    )

    def call(**changes):
        a = dict(args, **changes)
        K.moe_ffn(a["x"], a["gate"], a["up"], a["down"], a["idx"], a["weights"],
                  a["scratch"], a["out"], threads=1)

    call()
    with pytest.raises(ValueError, match="idx out of range"):
        call(idx=np.array([[0, 4], [1, 2]], np.int32))
    with pytest.raises(ValueError, match="idx out of range"):
        call(idx=np.array([[0, -1], [1, 2]], np.int32))
    with pytest.raises(ValueError, match="scratch"):
        call(scratch=f32(3))
    with pytest.raises(TypeError, match="share a dtype"):
        call(up=np.zeros((E, I, D), np.uint16))
    with pytest.raises(ValueError, match="down must have shape"):
        call(down=f32(E, I, D))
    with pytest.raises(ValueError, match="overlap"):
        call(out=args["x"])
