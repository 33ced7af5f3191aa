"""Expert parallelism over MPI (moecc.parallel), on this machine: `mpiexec -n 2` and `-n 3` over
loopback, one thread per rank.  Every rank's logits equal one process's within float32 rounding
(1e-5 relative), greedy tokens are identical, on the fixtures, f32 and q4; the CLIs print once;
each rank keeps only its share of the weights resident; mismatched files, too many ranks and a
missing file are refused on every rank with one line; a rank whose collective fails, or that is
killed mid-generation, ends the job within seconds.  The programs the ranks run are in mpi_ranks.py.

Skipped only where no MPI can be had (mpi4py or mpiexec missing), with the reason; with
MOECC_REQUIRE_MPI=1 (CI) that is a failure instead.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import moecc
from conftest import Reference, relative_error

HERE = os.path.dirname(os.path.abspath(__file__))
RANKS_PROGRAM = os.path.join(HERE, "mpi_ranks.py")
TOLERANCE = 1e-5  # float32 sums of the experts' outputs in another order than one process's
RUN_TIMEOUT = 60  # seconds any one mpiexec job may take before the test fails (a hang)
GREEDY_TOKENS = 12


def launch(mpiexec: str, ranks: int, *args: str) -> list[str]:
    """The mpiexec command line of `ranks` ranks running python with args."""
    return [mpiexec, "-n", str(ranks), sys.executable, *args]


def run(command: list[str], timeout: float = RUN_TIMEOUT, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, input=stdin,
                          stdin=None if stdin is not None else subprocess.DEVNULL)


def spmd(mpiexec: str, ranks: int, *args: str) -> subprocess.CompletedProcess:
    """mpi_ranks.py under mpiexec, through `python -m mpi4py` (an exception on one rank aborts the job)."""
    done = run(launch(mpiexec, ranks, "-m", "mpi4py", RANKS_PROGRAM, *args))
    assert done.returncode == 0, f"mpiexec -n {ranks} {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


# ---- the step's hook, in this process ------------------------------------------------------

def _network(model, shard):
    from moecc.model import PREFILL_CHUNK, Buffers, KVCache, Transformer
    cfg = model.config
    return Transformer(cfg, model.source.weights, Buffers(cfg, PREFILL_CHUNK), KVCache(cfg, 1, 64, "f32"), 1, shard)


def _step(net, tokens):
    logits = np.empty((len(tokens), net.cfg.vocab_size), np.float32)
    T = len(tokens)
    net.forward(np.asarray(tokens, np.int32), np.zeros(T, np.int32), np.arange(T, dtype=np.int32),
                np.arange(T, dtype=np.int32), logits)
    return logits


def test_a_shard_of_one_rank_changes_nothing(mpiexec, converted):
    """All experts and a sum over one rank: the same bits as no shard, one sum per sparse layer."""
    from mpi4py import MPI
    from moecc.parallel import ExpertShard
    model = moecc.load(converted("main", "q4"), threads=1)
    shard = ExpertShard.of(MPI.COMM_SELF, model.config.num_experts)
    tokens = list(range(3, 40))
    np.testing.assert_array_equal(_step(_network(model, shard), tokens), _step(_network(model, None), tokens))
    sparse = sum(model.config.is_sparse_layer(i) for i in range(model.config.num_hidden_layers))
    assert shard.experts == (0, model.config.num_experts) and shard.reduces == sparse >= 1


def test_a_sum_that_raises_ends_the_step_with_its_error(mpiexec, converted):
    from mpi4py import MPI
    from moecc.parallel import ExpertShard
    model = moecc.load(converted("main", "f32"), threads=2)
    shard = ExpertShard.of(MPI.COMM_SELF, model.config.num_experts)
    calls = []

    def interrupted(values):  # as an Allreduce interrupted by Ctrl-C
        calls.append(values.shape)
        raise KeyboardInterrupt
    shard.sum_over_ranks = interrupted
    net = _network(model, shard)
    with pytest.raises(KeyboardInterrupt):
        _step(net, [5, 6, 7])
    assert calls == [(3 * model.config.hidden_size,)]  # the step stopped at the first sum


# ---- the same results as one process ------------------------------------------------------

CASES = ("main", "gqa")  # 8 experts top-2 with a dense layer; 64 experts top-8


@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("quant", ["f32", "q4"])
def test_ranks_compute_what_one_process_computes(mpiexec, converted, tmp_path, ranks, quant):
    models = [converted(case, quant) for case in CASES]
    inputs = {}
    for case in CASES:
        ref = Reference(case)
        for i, (ids, _) in enumerate(ref.prompts()):
            inputs[f"ids_{case}{i}"] = ids
        for j, (prompt, _) in enumerate(ref.greedy()):
            inputs[f"greedy_{case}{j}"] = prompt
    inputs["greedy_tokens"] = np.array([GREEDY_TOKENS])
    np.savez(tmp_path / "inputs.npz", **inputs)
    spmd(mpiexec, ranks, "results", *models, "--inputs", str(tmp_path / "inputs.npz"), "--out", str(tmp_path))
    got = [dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(ranks)]
    for m_index, path in enumerate(models):
        alone = moecc.load(path, threads=1)
        alone.eos_token_ids = frozenset()
        for key, ids in inputs.items():
            if key.startswith("ids_"):
                expected = alone.logits(ids.tolist())
                for r in range(ranks):
                    err = relative_error(got[r][f"{m_index}_logits_{key[4:]}"], expected)
                    assert err <= TOLERANCE, f"{path}, {key}, rank {r} of {ranks}: error {err:.2e}"
            elif key.startswith("greedy_"):
                expected = [s.token for s in alone.generate(ids.tolist(), max_tokens=GREEDY_TOKENS, temperature=0)]
                for r in range(ranks):
                    assert got[r][f"{m_index}_{key}"].tolist() == expected, f"{path}, {key}, rank {r} of {ranks}"
        alone.close()


def test_generate_cli_prints_once_what_one_process_prints(mpiexec, converted):
    args = ["-m", "moecc.generate", "--model", converted("main", "f32"), "--raw", "--prompt", "The capital of",
            "--temperature", "0", "--max-tokens", "16", "--threads", "1"]
    alone = run([sys.executable, *args])
    together = run(launch(mpiexec, 2, *args))
    assert alone.returncode == 0 and together.returncode == 0, together.stderr
    assert together.stdout == alone.stdout and alone.stdout
    assert together.stderr.count("generated: ") == 1, together.stderr


def test_chat_cli_reads_on_rank_0_and_answers_as_one_process(mpiexec, converted):
    args = ["-m", "moecc.chat", "--model", converted("main", "f32"), "--temperature", "0", "--max-tokens", "8",
            "--threads", "1"]
    lines = "Hello\nAnd again\n/exit\n"
    alone = run([sys.executable, *args], stdin=lines)
    together = run(launch(mpiexec, 2, *args), stdin=lines)
    assert alone.returncode == 0 and together.returncode == 0, together.stderr
    assert together.stdout == alone.stdout and alone.stdout.count("> ") == 3
    assert together.stderr.count("generated, ") == 2, together.stderr


# ---- memory: each rank holds its share -------------------------------------------------------

def test_each_rank_keeps_only_its_share_resident(mpiexec, tmp_path):
    from moecc.synthetic.quantized import write_quantized_model
    path = str(tmp_path / "wide-experts.moecc")
    geometry = dict(vocab_size=512, hidden_size=256, head_dim=32, num_attention_heads=4, num_key_value_heads=2,
                    moe_intermediate_size=256, intermediate_size=256, num_experts=32, num_experts_per_tok=4)
    write_quantized_model(path, 2, "q4", seed=2, progress=False, **geometry)
    spmd(mpiexec, 2, "resident", path, "--out", str(tmp_path))
    # a slice of an expert tensor ends inside a page, which the neighbour's slice shares; the
    # kernel may map one more (without ModelSource.keep_to's madvise it mapped up to the whole
    # neighbouring slice, 580 KiB, from the page cache the other rank filled)
    slack = 6 * 2 * 3 * 4096  # 2 layers x 3 expert tensors, two ends each, 3 pages at most
    for r in range(2):
        with open(tmp_path / f"rank{r}.json") as f:
            rank = json.load(f)
        assert rank["touched"] >= rank["shard_bytes"] * 0.98, rank
        for when in ("prefill", "touched"):
            assert rank[when] <= rank["shard_bytes"] + slack, (when, rank)
        assert rank["touched"] <= 0.65 * rank["all_bytes"], rank


# ---- refused at start, on every rank, with one line ---------------------------------------------

def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("moecc: error")]


def test_ranks_with_different_files_are_refused(mpiexec, converted):
    args = ["-m", "moecc.generate", "--raw", "--max-tokens", "2", "--threads", "1", "--model"]
    done = run([mpiexec, "-n", "1", sys.executable, *args, converted("main", "f32"), ":",
                "-n", "1", sys.executable, *args, converted("main", "q4")])
    assert done.returncode != 0
    lines = _error_lines(done.stderr)
    assert len(lines) == 1 and "rank 1 has a different model file than rank 0" in lines[0], done.stderr


def test_a_rank_that_cannot_open_its_file_stops_every_rank(mpiexec, converted, tmp_path):
    args = ["-m", "moecc.generate", "--raw", "--max-tokens", "2", "--threads", "1", "--model"]
    done = run([mpiexec, "-n", "1", sys.executable, *args, converted("main", "f32"), ":",
                "-n", "1", sys.executable, *args, str(tmp_path / "absent.moecc")])
    assert done.returncode != 0
    lines = _error_lines(done.stderr)
    assert len(lines) == 1 and "rank 1 of 2 could not load the model" in lines[0] and "no such file" in lines[0], \
        done.stderr


def test_more_ranks_than_experts_are_refused(mpiexec, tmp_path):
    from moecc.synthetic.quantized import write_quantized_model
    path = str(tmp_path / "two-experts.moecc")
    write_quantized_model(path, 1, "q4", progress=False, vocab_size=512, hidden_size=64, head_dim=16,
                          num_attention_heads=4, num_key_value_heads=2, moe_intermediate_size=32,
                          intermediate_size=64, num_experts=2, num_experts_per_tok=1)
    done = run(launch(mpiexec, 3, "-m", "moecc.generate", "--model", path, "--max-tokens", "2", "--threads", "1"))
    assert done.returncode != 0
    lines = _error_lines(done.stderr)
    assert len(lines) == 1 and "3 ranks but the model has 2 experts per layer" in lines[0] \
        and "run at most 2 ranks" in lines[0], done.stderr


# ---- a rank that fails or dies ends the job ----------------------------------------------------------

def test_a_failed_sum_on_one_rank_ends_the_job(mpiexec, converted):
    """Rank 1's Allreduce fails (its communicator is gone) while rank 0 waits in its own."""
    started = time.monotonic()
    done = run(launch(mpiexec, 2, RANKS_PROGRAM, "broken", converted("main", "q4")))
    assert done.returncode != 0 and time.monotonic() - started < RUN_TIMEOUT / 2
    assert "moecc: rank 1 of 2: the sum of the experts' outputs failed (Invalid communicator" in done.stderr, \
        done.stderr
    assert "ending the job" in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize("ranks,victim", [(2, 1), (3, 0)])
def test_a_killed_rank_ends_the_job_within_seconds(mpiexec, converted, tmp_path, ranks, victim):
    job = subprocess.Popen(launch(mpiexec, ranks, RANKS_PROGRAM, "endless", converted("main", "q4"),
                                  "--out", str(tmp_path)),
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        pid_files = [tmp_path / f"rank{r}.pid" for r in range(ranks)]
        deadline = time.monotonic() + RUN_TIMEOUT
        while not all(f.exists() for f in pid_files):  # until every rank is generating
            assert job.poll() is None, f"the job ended before generating: {job.stdout.read()}"
            assert time.monotonic() < deadline, "the ranks did not start generating"
            time.sleep(0.05)
        pids = [int(f.read_text()) for f in pid_files]
        os.kill(pids[victim], signal.SIGKILL)
        killed = time.monotonic()
        output, _ = job.communicate(timeout=30)
        ended = time.monotonic() - killed
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert job.returncode != 0
    assert ended < 10, f"the job took {ended:.1f} s to end after rank {victim} was killed"
    # mpiexec (Hydra) names the process that died and how
    assert "BAD TERMINATION" in output and f"PID {pids[victim]} " in output and "Killed (signal 9)" in output, output
