"""Kernel benchmarks at Qwen3-30B-A3B's shapes (pytest-benchmark), for every storage type.

    python -m pytest benchmarks/test_kernels.py --benchmark-only -q -s
    MOECC_ISA=avx2 python -m pytest benchmarks/test_kernels.py ...   # one ISA

Decode shapes (one token) are memory-bound: each benchmark records the weight bytes it reads,
the achieved GB/s and its fraction of this machine's read bandwidth, measured once in the same
run by `moecc.bandwidth` (a vector-load C loop over 2 GiB, not a NumPy copy), in `extra_info`
(shown with --benchmark-json, or -s for the printed line).  So that these are memory figures and
not cache figures (the L3 is 32 MB), each call reads the next of several copies of the weight
(512 MB in all) or, for the experts, the next 8 of the 128 experts: what a real decode step
does, whose every layer has new weights.  Prefill shapes (512 tokens) are compute-bound and
report GFLOP/s.  Weights are random values in the storage type under test (quantized by
moecc.quant, the converter's code).  Not part of the test suite (testpaths = tests); run it on
an otherwise idle machine.
"""
import os

import numpy as np
import pytest

K = pytest.importorskip("moecc._kernels")
from moecc import quant  # noqa: E402
from moecc.bandwidth import measure  # noqa: E402

THREADS = int(os.environ.get("MOECC_BENCH_THREADS", os.cpu_count() or 1))
D, HQ, HKV, HD, E, TOPK, I, V = 2048, 32, 4, 128, 128, 8, 768, 151936
KINDS = ("f32", "bf16", "q8", "q4", "q4p")  # q4p: what moecc-convert --quant q4 writes
PREFILL_T = 512


def stored(kind, *shape, seed=0):
    """Random weights of `shape` ([..., rows, K]) as storage type `kind` stores them."""
    values = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32) * 0.02
    if kind == "f32":
        return values
    if kind == "bf16":
        return quant.f32_to_bf16(values)
    return quant.quantize(values, kind)


def activations(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def cycling(arrays):
    """Each call returns the next of `arrays`, round and round."""
    state = {"i": -1}

    def next_one():
        state["i"] = (state["i"] + 1) % len(arrays)
        return arrays[state["i"]]
    return next_one


def copies(one, total_bytes=512 << 20):
    return [one] + [one.copy() for _ in range(max(1, total_bytes // one.nbytes) - 1)]


@pytest.fixture(scope="session")
def machine_bandwidth():
    """The machine's read bandwidth (GB/s) with THREADS threads, measured once per run."""
    return measure(threads=THREADS)["gb_s"]


def report(benchmark, nbytes, bandwidth):
    seconds = benchmark.stats.stats.median
    gb_s = nbytes / seconds / 1e9
    benchmark.extra_info.update(weight_bytes=nbytes, gb_s=round(gb_s, 2), read_bandwidth_gb_s=bandwidth,
                                fraction_of_bandwidth=round(gb_s / bandwidth, 3))
    print(f"\n  {benchmark.name}: {nbytes / 1e6:.1f} MB in {seconds * 1e3:.3f} ms = {gb_s:.1f} GB/s "
          f"({100 * gb_s / bandwidth:.0f}% of {bandwidth:.1f} GB/s)")


def report_flops(benchmark, flops):
    seconds = benchmark.stats.stats.median
    benchmark.extra_info["gflop_s"] = round(flops / seconds / 1e9, 1)
    print(f"\n  {benchmark.name}: {flops / seconds / 1e9:.1f} GFLOP/s")


MATVEC_SHAPES = {  # name: (rows, cols) of the weight, as in Qwen3-30B-A3B
    "expert_gate_up": (I, D),
    "expert_down": (D, I),
    "attn_q_proj": (HQ * HD, D),
    "attn_k_proj": (HKV * HD, D),
    "attn_o_proj": (D, HQ * HD),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(MATVEC_SHAPES))
def test_matvec(benchmark, machine_bandwidth, name, kind):
    rows, cols = MATVEC_SHAPES[name]
    x, out = activations(1, cols), np.empty((1, rows), np.float32)
    weights = cycling(copies(stored(kind, rows, cols)))
    benchmark(lambda: K.matmul(x, weights(), out, threads=THREADS, storage=kind))
    report(benchmark, weights().nbytes, machine_bandwidth)


@pytest.mark.parametrize("kind", KINDS)
def test_matvec_lm_head(benchmark, machine_bandwidth, kind):
    x, w, out = activations(1, D), stored(kind, V, D), np.empty((1, V), np.float32)
    benchmark.pedantic(K.matmul, args=(x, w, out), kwargs={"threads": THREADS, "storage": kind},
                       rounds=10, warmup_rounds=1)
    report(benchmark, w.nbytes, machine_bandwidth)


@pytest.mark.parametrize("kind", KINDS)
def test_moe_ffn_decode(benchmark, machine_bandwidth, kind):
    gate, up, down = stored(kind, E, I, D, seed=1), stored(kind, E, I, D, seed=2), stored(kind, E, D, I, seed=3)
    x, out = activations(1, D), np.empty((1, D), np.float32)
    # 16 disjoint choices of 8 experts: each call reads experts the previous 15 did not
    choices = cycling([np.arange(c, E, E // TOPK, dtype=np.int32)[np.newaxis] for c in range(E // TOPK)])
    weights = np.full((1, TOPK), 1 / TOPK, np.float32)
    scratch = np.empty(K.moe_scratch_floats(1, TOPK, D, I), np.float32)
    benchmark(lambda: K.moe_ffn(x, gate, up, down, choices(), weights, scratch, out, threads=THREADS, storage=kind))
    report(benchmark, TOPK * (gate[0].nbytes + up[0].nbytes + down[0].nbytes), machine_bandwidth)


def test_router_decode(benchmark, machine_bandwidth):
    x, w = activations(1, D), activations(E, D, seed=1) * 0.02  # the router is stored f32
    routers = cycling(copies(w))
    logits, ids, weights = np.empty((1, E), np.float32), np.empty((1, TOPK), np.int32), np.empty((1, TOPK), np.float32)

    def run():
        K.matmul(x, routers(), logits, threads=THREADS)
        K.router_topk(logits, TOPK, True, ids, weights, threads=THREADS)
    benchmark(run)
    report(benchmark, w.nbytes, machine_bandwidth)


@pytest.mark.parametrize("kv_cache", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("pos", [511, 4095])
def test_attention_decode(benchmark, machine_bandwidth, pos, kv_cache):
    ctx = 4096  # a token at position pos attends over pos + 1 cached positions
    q = activations(1, HQ, HD)
    k_cache = activations(HKV, ctx, HD, seed=1).astype(kv_cache)
    v_cache = activations(HKV, ctx, HD, seed=2).astype(kv_cache)
    out = np.empty((1, HQ, HD), np.float32)
    benchmark(K.attention, q, k_cache, v_cache, np.array([pos], np.int32), out, threads=THREADS)
    report(benchmark, 2 * HKV * (pos + 1) * HD * k_cache.itemsize, machine_bandwidth)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["expert_gate_up", "attn_q_proj"])
def test_matmul_prefill(benchmark, name, kind):
    rows, cols = MATVEC_SHAPES[name]
    x, w, out = activations(PREFILL_T, cols), stored(kind, rows, cols), np.empty((PREFILL_T, rows), np.float32)
    benchmark.pedantic(K.matmul, args=(x, w, out), kwargs={"threads": THREADS, "storage": kind},
                       rounds=5, warmup_rounds=1)
    report_flops(benchmark, 2 * PREFILL_T * rows * cols)


@pytest.mark.parametrize("kind", KINDS)
def test_moe_ffn_prefill(benchmark, kind):
    gate, up, down = stored(kind, E, I, D, seed=1), stored(kind, E, I, D, seed=2), stored(kind, E, D, I, seed=3)
    rng = np.random.default_rng(0)
    x, out = activations(PREFILL_T, D), np.empty((PREFILL_T, D), np.float32)
    ids = np.stack([rng.choice(E, TOPK, replace=False) for _ in range(PREFILL_T)]).astype(np.int32)
    weights = np.full((PREFILL_T, TOPK), 1 / TOPK, np.float32)
    scratch = np.empty(K.moe_scratch_floats(PREFILL_T, TOPK, D, I), np.float32)
    benchmark.pedantic(K.moe_ffn, args=(x, gate, up, down, ids, weights, scratch, out),
                       kwargs={"threads": THREADS, "storage": kind}, rounds=3, warmup_rounds=1)
    report_flops(benchmark, 2 * PREFILL_T * TOPK * 3 * I * D)
