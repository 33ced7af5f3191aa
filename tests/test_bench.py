"""moecc-bench's pieces that need no big file and no llama.cpp: the synthetic checkpoint's
tensor names, the quantized synthetic model writer on a tiny geometry, the per-layer /
thread-scaling arithmetic, the command line (which runs from an install, no checkout around it)."""
from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys

import numpy as np
import pytest

import moecc
from moecc import bandwidth, bench, quant
from moecc.formats import moecc_file
from moecc.bench_report import (
    Case,
    per_layer_costs,
    print_summary,
    summarize,
    thread_scaling,
)
from moecc.config import Qwen3MoeConfig, tensor_specs
from moecc.convert import StoragePlan, convert
from moecc.synthetic import synthetic_files
from moecc.synthetic.checkpoint import hf_tensors, make_checkpoint
from moecc.synthetic.quantized import quantized_scale, write_quantized_model

# Qwen3-30B-A3B's structure, shrunk: every quantized row still divides into groups of 32
TINY = {"vocab_size": 512, "hidden_size": 64, "head_dim": 16, "num_attention_heads": 4, "num_key_value_heads": 2,
        "moe_intermediate_size": 32, "intermediate_size": 64, "num_experts": 8, "num_experts_per_tok": 2}
LAYERS = 2
GGUF_FILE = os.path.join(os.path.dirname(__file__), "fixtures", "gguf", "moe256-Q8_0.gguf")


@pytest.fixture(scope="module", params=["q4", "q8"])
def synthetic_file(request, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("synq") / f"tiny-{request.param}.moecc")
    write_quantized_model(path, LAYERS, request.param, seed=1, progress=False, **TINY)
    return request.param, path


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    hf = str(tmp_path_factory.mktemp("hf") / "tiny")
    make_checkpoint(hf, layers=LAYERS, progress=False, **TINY)
    return hf


def test_checkpoint_has_the_published_names_and_shapes():
    """The full model's checkpoint: the inventory, experts one by one as Qwen publishes them."""
    raw, _ = synthetic_files(48)
    tensors = {t.name: (t.shape, t.fill) for t in hf_tensors(raw)}
    specs = tensor_specs(Qwen3MoeConfig.from_dict(raw))
    assert len(tensors) == len(specs) + 48 * 3 * (128 - 1)
    assert tensors["model.layers.47.mlp.experts.127.down_proj.weight"] == ((2048, 768), "normal")
    assert tensors["model.layers.0.mlp.experts.0.gate_proj.weight"] == ((768, 2048), "normal")
    assert tensors["model.layers.3.self_attn.k_norm.weight"] == ((128,), "ones")
    assert tensors["lm_head.weight"] == ((151936, 2048), "normal")
    assert not any(s.name in tensors for s in specs if s.role == "experts")  # never stacked


def _table(mf: moecc_file.ModelFile) -> dict:
    return {name: (e.dtype, e.shape, e.offset, e.size) for name, e in mf.tensors.items()}


def test_quantized_model_is_what_the_converter_writes(synthetic_file, tiny_checkpoint, tmp_path):
    qtype, path = synthetic_file
    converted = str(tmp_path / "converted.moecc")
    convert(tiny_checkpoint, converted, StoragePlan(qtype), progress=False)
    ours, theirs = moecc_file.ModelFile(path), moecc_file.ModelFile(converted)
    try:
        assert ours.verify() == []
        assert ours.config_dict == theirs.config_dict
        assert _table(ours) == _table(theirs)
        assert {n: (e.size, e.crc32) for n, e in ours.files.items()} == \
               {n: (e.size, e.crc32) for n, e in theirs.files.items()}
        assert ours.writer_info["quant"] == qtype
        assert ours.writer_info["synthetic"] == {"model": "qwen3-30b-a3b", "layers": LAYERS, "seed": 1}
    finally:
        ours.close()
        theirs.close()


def test_quantized_model_weights_look_like_the_checkpoints(synthetic_file):
    _, path = synthetic_file
    mf = moecc_file.ModelFile(path)
    try:
        e = mf.tensors["model.layers.0.mlp.experts.gate_proj"]
        w = quant.dequantize(np.asarray(mf.tensor(e.name)), e.dtype, e.shape[-1])
        assert abs(w.std() - 0.02) < 0.002 and abs(w.mean()) < 0.002
        assert np.all(mf.tensor("model.layers.1.input_layernorm.weight") == 1.0)
        router = np.asarray(mf.tensor("model.layers.0.mlp.gate.weight"))
        assert router.dtype == np.float32 and abs(router.std() - 0.02) < 0.004
    finally:
        mf.close()


def test_a_file_is_reused_only_while_the_converter_would_write_it(synthetic_file, tiny_checkpoint, tmp_path):
    qtype, path = synthetic_file
    assert bench._reusable(path, qtype, {"quant": qtype})
    assert not bench._reusable(path, "q8" if qtype == "q4" else "q4", {})
    assert not bench._reusable(path, qtype, {"quant": "q8" if qtype == "q4" else "q4"})
    args = argparse.Namespace(moecc_file=str(tmp_path / f"tiny-{qtype}.moecc"), quant=qtype, reconvert=False)
    converted, seconds = bench.prepare_moecc_file(args, tiny_checkpoint)
    assert seconds is not None
    assert bench.prepare_moecc_file(args, tiny_checkpoint) == (converted, None)
    args.quant = "q8" if qtype == "q4" else "q4"  # the same file name, another type: converted again
    assert bench.prepare_moecc_file(args, tiny_checkpoint)[1] is not None


def test_the_worker_times_a_model(synthetic_file):
    """What a moecc turn runs in its own process, here in this one on the tiny file."""
    _, path = synthetic_file
    out = bench.worker(path, threads=1, pp=8, tg=2, reps=1, seed=0)
    assert out["pp_tok_s"] > 0 and out["tg_tok_s"] > 0 and len(out["tg_runs"]) == 1
    assert out["load_s"] >= 0 and out["kernels"] == bench.kernel_build()


def test_quantized_scale_gives_the_std():
    rng = np.random.default_rng(0)
    q4 = (rng.integers(0, 16, 100_000) - 8) * quantized_scale("q4")
    assert abs(q4.std() - 0.02) < 0.0005


def test_quantized_model_loads_and_runs(synthetic_file):
    _, path = synthetic_file
    model = moecc.load(path, threads=1, ctx=64)
    logits = model.logits([5, 17, 300, 42])
    assert logits.shape == (4, TINY["vocab_size"]) and np.isfinite(logits).all() and logits.std() > 0
    steps = list(model.generate([1, 2, 3], max_tokens=4, temperature=0))
    assert 1 <= len(steps) <= 4


# --------------------------------------------------------------------------------------------
# per-layer cost and thread scaling from made-up rounds


def _turn(pp_ms: float, tg_ms: float) -> dict:
    """An engine's turn with the given ms per prompt token and per generated token."""
    return {"pp_tok_s": 1000 / pp_ms, "tg_tok_s": 1000 / tg_ms, "bandwidth_gb_s": 40.0, "load_s": 0.3,
            "peak_rss_mb": 1000.0}


def _fake_rounds(noise: list[float]) -> tuple[list[dict], list[Case]]:
    """Rounds in which moecc costs 0.5 ms/layer/token decoding (llama.cpp 1.0) plus 2 ms fixed,
    and prefill 0.1 ms/layer/token (llama.cpp 0.4); two threads are 1.5x (decode) and 1.8x
    (prefill) faster for moecc, 1.2x / 1.5x for llama.cpp.  Each round is slowed by a factor."""
    cases = [Case(f"syn{L}", L, t) for L in (4, 8) for t in (1, 2)]
    rounds = []
    for slow in noise:
        r = {}
        for c in cases:
            speed = {"moecc": (1.8, 1.5), "llama.cpp": (1.5, 1.2)}
            turns = {}
            for engine, (pp_ms, tg_ms) in {"moecc": (0.1, 0.5), "llama.cpp": (0.4, 1.0)}.items():
                pp_up, tg_up = speed[engine] if c.threads == 2 else (1.0, 1.0)
                turns[engine] = _turn(slow * (pp_ms * c.layers + 0.05) / pp_up, slow * (tg_ms * c.layers + 2) / tg_up)
            r[c.key] = {"moecc": turns["moecc"], "llama.cpp": {"q4": turns["llama.cpp"]},
                        "ratio": {"q4": {m: turns["moecc"][f"{m}_tok_s"] / turns["llama.cpp"][f"{m}_tok_s"]
                                         for m in ("pp", "tg")}}}
        rounds.append(r)
    return rounds, cases


def test_per_layer_costs():
    rounds, cases = _fake_rounds([1.0, 1.0, 3.0])  # the slow round is outvoted by the median
    costs = per_layer_costs(rounds, cases)
    assert set(costs) == {"threads 1", "threads 2"}
    one = costs["threads 1"]
    assert one["layers"] == [4, 8]
    assert one["engines"]["moecc"]["decode_ms_per_layer"] == pytest.approx(0.5)
    assert one["engines"]["moecc"]["decode_ms_fixed"] == pytest.approx(2.0)
    assert one["engines"]["moecc"]["prefill_ms_per_layer"] == pytest.approx(0.1)
    assert one["engines"]["llama.cpp q4"]["decode_ms_per_layer"] == pytest.approx(1.0)
    assert one["ratio"]["llama.cpp q4"] == {"decode": pytest.approx(0.5), "prefill": pytest.approx(0.25)}
    assert one["ratio_of_medians"]["llama.cpp q4"] == {"decode": pytest.approx(0.5), "prefill": pytest.approx(0.25)}
    assert costs["threads 2"]["engines"]["moecc"]["decode_ms_per_layer"] == pytest.approx(0.5 / 1.5)


def test_per_layer_cost_is_the_least_squares_slope_over_three_counts():
    cases = [Case(f"syn{L}", L, 2) for L in (2, 4, 8)]
    ms = {2: 3.0, 4: 4.2, 8: 6.0}  # not on one line
    rounds = [{c.key: {"moecc": _turn(1.0, ms[c.layers]), "llama.cpp": {}, "ratio": {}} for c in cases}]
    slope = np.polyfit([2, 4, 8], [3.0, 4.2, 6.0], 1)[0]
    assert per_layer_costs(rounds, cases)["threads 2"]["engines"]["moecc"]["decode_ms_per_layer"] == \
        pytest.approx(slope)


def test_thread_scaling():
    rounds, cases = _fake_rounds([1.0, 2.0, 1.0])
    scaling = thread_scaling(rounds, cases)
    assert set(scaling) == {"syn4", "syn8"}
    assert scaling["syn8"]["threads"] == [1, 2] and scaling["syn8"]["base_threads"] == 1
    assert scaling["syn8"]["engines"]["moecc"]["2"] == {"decode": pytest.approx(1.5), "prefill": pytest.approx(1.8)}
    assert scaling["syn4"]["engines"]["llama.cpp q4"]["2"] == {"decode": pytest.approx(1.2),
                                                               "prefill": pytest.approx(1.5)}


def test_one_case_has_neither_per_layer_cost_nor_scaling(capsys):
    rounds, cases = _fake_rounds([1.0])
    one = [cases[0]]
    rounds = [{one[0].key: r[one[0].key]} for r in rounds]
    summary = summarize(rounds, one, ["q4"])
    assert summary["per_layer"] == {} and summary["thread_scaling"] == {}
    assert summary["cases"][one[0].key]["ratio"]["q4"]["tg"] == pytest.approx(6 / 4)


def test_summary_prints_per_layer_costs_and_speedups(capsys):
    rounds, cases = _fake_rounds([1.0, 1.0, 1.0])
    summary = summarize(rounds, cases, ["q4"])
    decode_bytes = {c.label: {"moecc": 10**8, "llama.cpp q4": 10**8} for c in cases}
    print_summary(summary, rounds, cases, ["q4"], "q4", decode_bytes)
    out = capsys.readouterr().out
    assert "decode 0.50, 0.50 (target <= 0.75)" in out
    assert "1->2 threads: decode 1.50x, prefill 1.80x" in out


# --------------------------------------------------------------------------------------------
# the command line


def test_lists_and_single_values():
    args = bench.parse_args(["--layers", "8,4", "--threads", "2,1", "--no-peer", "--bandwidth", "40"])
    assert args.layers == [4, 8] and args.threads == [1, 2] and args.peers == []
    args = bench.parse_args(["--layers", "8", "--threads", "2", "--no-peer", "--bandwidth", "40"])
    assert args.layers == [8] and args.threads == [2]
    args = bench.parse_args(["--synthetic", "qwen3-30b-a3b", "--layers", "48", "--quant", "q4", "--bandwidth", "40"])
    assert args.peers == []


@pytest.mark.parametrize("argv, message", [
    (["--layers", "4,x"], "comma-separated"),
    (["--layers", "4,4"], "twice"),
    (["--threads", "0", "--layers", "4"], "at least 1"),
    (["--synthetic", "qwen3-30b-a3b", "--quant", "q4"], "--synthetic needs --layers"),
    (["--synthetic", "qwen3-30b-a3b", "--layers", "4", "--quant", "bf16"], "quantized"),
    (["--synthetic", "qwen3-30b-a3b", "--layers", "4", "--quant", "q4", "--peer-quant", "q4"], "moecc only"),
    (["--layers", "4,8", "--moecc-file", "x.moecc", "--no-peer"], "one file"),
    (["--layers", "4", "--no-repack"], "--no-repack goes with --gguf"),
    (["--gguf", "missing.gguf", "--no-peer"], "no such file"),
    (["--gguf", GGUF_FILE, "--quant", "q4", "--no-peer"], "as it is"),
    (["--gguf", GGUF_FILE, "--layers", "8"], "not allowed with argument"),
])
def test_bad_arguments_are_refused(argv, message, capsys):
    """(GGUF_FILE: a llama.cpp-made fixture file.)"""
    with pytest.raises(SystemExit):
        bench.parse_args([*argv, "--bandwidth", "40"])
    assert message in capsys.readouterr().err


def test_without_the_llama_cpp_harness_the_command_says_so_and_runs_moecc_alone(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(bench, "PEER_SCRIPT", str(tmp_path / "llamacpp_bench.py"))
    with pytest.raises(SystemExit):
        bench.parse_args(["--layers", "8"])
    err = capsys.readouterr().err
    assert "llama.cpp comparison" in err and "source checkout" in err and "--no-peer" in err
    assert bench.parse_args(["--layers", "8", "--no-peer"]).peers == []  # no --bandwidth needed
    assert bench.parse_args(["--synthetic", "qwen3-30b-a3b", "--layers", "48", "--quant", "q4"]).peers == []


def test_gguf_mode_times_both_engines_on_the_file(monkeypatch, tmp_path):
    harness = tmp_path / "llamacpp_bench.py"
    harness.write_text("")
    monkeypatch.setattr(bench, "PEER_SCRIPT", str(harness))
    args = bench.parse_args(["--gguf", GGUF_FILE, "--bandwidth", "40"])
    assert args.peers == ["gguf"] and args.quant == "gguf"
    assert bench.parse_args(["--gguf", GGUF_FILE, "--no-repack", "--bandwidth", "40"]).peers == ["gguf-norepack"]
    [subject] = bench.prepare_subjects(args)
    assert subject.path == GGUF_FILE and subject.layers == 2 and subject.hf is None
    # both engines read the file's own tensors: the count is the same for both, from its table
    assert subject.decode_bytes["moecc"] == subject.decode_bytes["llama.cpp gguf"]
    gguf = pytest.importorskip("gguf")
    sizes = {t.name: int(t.n_bytes) for t in gguf.GGUFReader(GGUF_FILE).tensors}
    experts = sum(v for k, v in sizes.items() if "_exps" in k)
    per_row = sizes["token_embd.weight"] // 768
    assert subject.decode_bytes["moecc"]["total"] == sum(sizes.values()) - experts // 2 - sizes["token_embd.weight"] + per_row


def test_the_worker_times_a_gguf():
    out = bench.worker(GGUF_FILE, threads=1, pp=8, tg=2, reps=1, seed=0)
    assert out["pp_tok_s"] > 0 and out["tg_tok_s"] > 0


def test_a_turn_probes_the_bandwidth_with_the_packages_kernel(monkeypatch):
    measure = bandwidth.measure
    monkeypatch.setattr(bandwidth, "measure", lambda threads: measure(threads, nbytes=64 << 20, passes=1))
    monkeypatch.setattr(bench, "run_moecc", lambda *args, **kwargs: {"tg_tok_s": 10.0})
    subject = bench.Subject("syn1", 1, "syn1.moecc", None, None, {"moecc": {"total": 10**9}})
    args = argparse.Namespace(bandwidth=None, pp=0, tg=1, reps=1)
    result = bench.run_turn("moecc", subject, 1, args, seed=0)
    assert result["bandwidth_gb_s"] > 0 and result["decode_gb_s"] == pytest.approx(10.0)


def test_the_command_runs_from_anywhere_with_the_package_alone(tmp_path):
    """Outside any checkout, with no PYTHONPATH: the installed package is all it needs, and a
    missing llama.cpp harness is one clear error."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MOECC_PEER_BENCH")}
    run = [sys.executable, "-m", "moecc.bench"]
    r = subprocess.run([*run, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "benchmarks/" not in r.stdout, r.stderr
    code = ("from moecc import bench; "
            "a = bench.parse_args(['--synthetic', 'qwen3-30b-a3b', '--layers', '48', '--quant', 'q4']); "
            "print(a.bandwidth, a.peers)")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.split() == ["None", "[]"], r.stderr
    env["MOECC_PEER_BENCH"] = str(tmp_path / "missing.py")
    r = subprocess.run([*run, "--layers", "8"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "--no-peer" in r.stderr and str(tmp_path / "missing.py") in r.stderr


def test_a_rebuild_of_the_kernels_during_the_run_is_flagged(capsys):
    rounds, cases = _fake_rounds([1.0, 1.0])
    for r, build in zip(rounds, ["aaa", "bbb"]):
        for case_round in r.values():
            case_round["moecc"]["kernels"] = build
    summary = summarize(rounds, cases, ["q4"])
    print_summary(summary, rounds, cases, ["q4"], "q4", {c.label: {"moecc": 1, "llama.cpp q4": 1} for c in cases})
    assert "kernels were rebuilt during the run (moecc ran builds aaa, bbb)" in capsys.readouterr().out


def test_kernel_build_names_the_extension():
    assert len(bench.kernel_build()) == 12


def test_disturbed_turns_are_left_out_of_slopes_and_speedups():
    rounds, cases = _fake_rounds([1.0, 1.0, 1.0])
    for r in rounds[:2]:  # in two of three rounds, another process stalled moecc at 8 layers, 1 thread
        r["syn8 t1"]["moecc"].update(tg_tok_s=5.0, other_cpu=0.5)
    summary = summarize(rounds, cases, ["q4"])
    assert summary["per_layer"]["threads 1"]["engines"]["moecc"]["decode_ms_per_layer"] == pytest.approx(0.5)
    assert summary["thread_scaling"]["syn8"]["engines"]["moecc"]["2"]["decode"] == pytest.approx(1.5)


def test_profile_accounts_for_every_block(synthetic_file):
    from moecc.profile import BLOCKS, print_profile, profile_decode
    _, path = synthetic_file
    p = profile_decode(path, threads=1, steps=4)
    assert set(p["blocks_s"]) == set(BLOCKS) and all(s > 0 for s in p["blocks_s"].values())
    assert p["step_outside_blocks_s"] >= 0 and p["loop_outside_step_s"] > 0
    within = sum(p["blocks_s"].values()) + p["step_outside_blocks_s"] + p["loop_outside_step_s"]
    assert abs(within - p["step_s"]) <= 1e-6 * p["step_s"] * 100  # the rows add up to the step
    assert p["bytes"]["experts"] > 0 and p["bytes"]["lm_head"] > 0
    out = io.StringIO()
    print_profile(p, out)
    assert "outside the kernels" in out.getvalue()
