"""Kernel benchmarks at Qwen3-30B-A3B's shapes (pytest-benchmark).

    python -m pytest benchmarks/test_kernels.py --benchmark-columns=median,ops -q
    MOECC_ISA=avx2 python -m pytest benchmarks/test_kernels.py ...   # one ISA

Decode shapes (one token) are memory-bound: each benchmark records the weight bytes it reads
and the achieved GB/s in `extra_info` (shown with --benchmark-json, or -s for the printed line).
So that these are memory figures and not cache figures (the L3 is 32 MB; a q_proj is 16.8 MB),
each call reads the next of several copies of the weight (512 MB in all) or, for the experts,
the next 8 of the 128 experts: what a real decode step does, whose every layer has new weights.
Prefill shapes (a chunk of 256 tokens) are compute-bound.  Weights are bf16 (uint16 bits) of a
constant small value: the speed of these kernels does not depend on the values, and filling a
1.2 GB expert tensor with random numbers would cost more than the benchmark.  Not part of the
test suite (testpaths = tests); run it on an otherwise idle machine.
"""
import os

import numpy as np
import pytest

K = pytest.importorskip("moecc._kernels")

THREADS = int(os.environ.get("MOECC_BENCH_THREADS", os.cpu_count() or 1))
D, HQ, HKV, HD, E, TOPK, I, V = 2048, 32, 4, 128, 128, 8, 768, 151936
BF16_SMALL = 0x3C23  # 0.00996 in bf16


def bf16(*shape):
    return np.full(shape, BF16_SMALL, np.uint16)


def activations(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def cycling(arrays):
    """Each call returns the next of `arrays`, round and round."""
    state = {"i": -1}

    def next_one():
        state["i"] = (state["i"] + 1) % len(arrays)
        return arrays[state["i"]]
    return next_one


def copies(shape, total_bytes=512 << 20):
    one = bf16(*shape)
    return [one] + [one.copy() for _ in range(max(1, total_bytes // one.nbytes) - 1)]


def report(benchmark, nbytes):
    seconds = benchmark.stats.stats.median
    benchmark.extra_info["weight_bytes"] = nbytes
    benchmark.extra_info["gb_s"] = round(nbytes / seconds / 1e9, 2)
    print(f"\n  {benchmark.name}: {nbytes / 1e6:.1f} MB in {seconds * 1e3:.3f} ms = {nbytes / seconds / 1e9:.1f} GB/s")


@pytest.fixture(scope="module")
def experts():
    return bf16(E, I, D), bf16(E, I, D), bf16(E, D, I)


@pytest.mark.parametrize("rows,name", [(HQ * HD, "q_proj"), (HKV * HD, "k_proj"), (D, "o_proj")])
def test_matmul_decode(benchmark, rows, name):
    cols = D if name != "o_proj" else HQ * HD
    x, out = activations(1, cols), np.empty((1, rows), np.float32)
    weights = cycling(copies((rows, cols)))
    benchmark(lambda: K.matmul(x, weights(), out, threads=THREADS))
    report(benchmark, rows * cols * 2)


def test_matmul_decode_lm_head(benchmark):
    x, w, out = activations(1, D), bf16(V, D), np.empty((1, V), np.float32)
    benchmark.pedantic(K.matmul, args=(x, w, out), kwargs={"threads": THREADS}, rounds=10, warmup_rounds=1)
    report(benchmark, w.nbytes)


def test_router_decode(benchmark):
    x, w = activations(1, D), activations(E, D, seed=1) * 0.02  # the router is stored f32
    routers = cycling([w] + [w.copy() for _ in range((512 << 20) // w.nbytes - 1)])
    logits, ids, weights = np.empty((1, E), np.float32), np.empty((1, TOPK), np.int32), np.empty((1, TOPK), np.float32)

    def run():
        K.matmul(x, routers(), logits, threads=THREADS)
        K.router_topk(logits, TOPK, True, ids, weights, threads=THREADS)
    benchmark(run)
    report(benchmark, w.nbytes)


def test_moe_ffn_decode(benchmark, experts):
    gate, up, down = experts
    x, out = activations(1, D), np.empty((1, D), np.float32)
    # 16 disjoint choices of 8 experts: each call reads experts the previous 15 did not
    choices = cycling([np.arange(c, E, E // TOPK, dtype=np.int32)[np.newaxis] for c in range(E // TOPK)])
    weights = np.full((1, TOPK), 1 / TOPK, np.float32)
    scratch = np.empty(K.moe_scratch_floats(1, TOPK, D, I), np.float32)
    benchmark(lambda: K.moe_ffn(x, gate, up, down, choices(), weights, scratch, out, threads=THREADS))
    report(benchmark, 3 * TOPK * I * D * 2)


def test_attention_decode(benchmark):
    ctx, pos = 4096, 511  # a token at position 511 attends over 512 cached positions
    q = activations(1, HQ, HD)
    k_cache, v_cache = activations(HKV, ctx, HD, seed=1), activations(HKV, ctx, HD, seed=2)
    out = np.empty((1, HQ, HD), np.float32)
    benchmark(K.attention, q, k_cache, v_cache, pos, out, threads=THREADS)
    report(benchmark, 2 * HKV * (pos + 1) * HD * 4)


def test_matmul_prefill(benchmark):
    T = 256
    x, w, out = activations(T, D), bf16(HQ * HD, D), np.empty((T, HQ * HD), np.float32)
    benchmark.pedantic(K.matmul, args=(x, w, out), kwargs={"threads": THREADS}, rounds=5, warmup_rounds=1)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info["gflop_s"] = round(2 * T * w.size / seconds / 1e9, 1)
    print(f"\n  {benchmark.name}: {2 * T * w.size / seconds / 1e9:.1f} GFLOP/s")


def test_moe_ffn_prefill(benchmark, experts):
    T = 256
    gate, up, down = experts
    rng = np.random.default_rng(0)
    x, out = activations(T, D), np.empty((T, D), np.float32)
    ids = np.stack([rng.choice(E, TOPK, replace=False) for _ in range(T)]).astype(np.int32)
    weights = np.full((T, TOPK), 1 / TOPK, np.float32)
    scratch = np.empty(K.moe_scratch_floats(T, TOPK, D, I), np.float32)
    benchmark.pedantic(K.moe_ffn, args=(x, gate, up, down, ids, weights, scratch, out),
                       kwargs={"threads": THREADS}, rounds=3, warmup_rounds=1)
    seconds = benchmark.stats.stats.median
    flops = 2 * T * TOPK * 3 * I * D
    benchmark.extra_info["gflop_s"] = round(flops / seconds / 1e9, 1)
    print(f"\n  {benchmark.name}: {flops / seconds / 1e9:.1f} GFLOP/s")
