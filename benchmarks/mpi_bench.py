"""Expert parallelism on this machine: one model across N ranks over loopback, N = 1, 2, ...

    python benchmarks/mpi_bench.py --model /work/scratch/syn8-q4.moecc --ranks 1 2 [--json out.json]

For each N it runs `mpiexec -n N` of this script's worker (one thread per rank by default) and
reports, per rank: resident memory (the process's VmRSS, and the part of it that is the model
file: its shard of the weights, after Model.touch), prefill and decode tok/s (median of
--rounds), the per-layer collective in a decode step (ExpertShard's time in the Allreduce of a
sparse layer, waiting for the slower rank included) and its share of the step, and an Allreduce
of one decode row alone (the bare collective on this machine's loopback).  The last lines
compare each N's largest per-rank RSS with N = 1's.

Run it only on an otherwise idle machine: the ranks share its cores, and timings with other
work running mean nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np


def vm_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def worker(a: argparse.Namespace) -> None:
    """One rank: load its shard, measure, send the figures to rank 0, which prints them as JSON."""
    from mpi4py import MPI

    import moecc
    from moecc.memory import resident_file_bytes
    comm = MPI.COMM_WORLD
    model = moecc.load(a.model, threads=a.threads, ctx=a.prompt + a.tokens + 8, comm=comm)
    model.touch()
    model.eos_token_ids = frozenset()  # exactly --tokens steps
    shard = model.net.shard
    figures = {"rank": comm.Get_rank(), "experts": list(shard.experts) if shard else [0, model.config.num_experts],
               "vm_rss": vm_rss(), "model_resident": resident_file_bytes(a.model),
               "model_read_bytes": model.source.read_bytes(shard.experts if shard else None)}
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, model.config.vocab_size, a.prompt).tolist()
    prefill, decode, per_layer, share = [], [], [], []
    for _ in range(a.rounds + 1):  # the first round warms up
        comm.Barrier()
        steps = model.generate(prompt, max_tokens=a.tokens + 1, temperature=0)
        next(steps)  # the prompt's token: the prefill is done
        before = (shard.reduce_seconds, shard.reduces) if shard else (0.0, 0)
        for _ in steps:
            pass
        stats = model.stats
        prefill.append(stats.prefill_tokens_per_second)
        decode.append(stats.decode_tokens_per_second)
        if shard:
            seconds, count = shard.reduce_seconds - before[0], shard.reduces - before[1]
            per_layer.append(seconds / count)
            share.append(seconds / stats.decode_seconds)
    figures.update(prefill_tok_s=statistics.median(prefill[1:]), decode_tok_s=statistics.median(decode[1:]),
                   collective_s_per_layer=statistics.median(per_layer[1:]) if shard else 0.0,
                   collective_share_of_decode=statistics.median(share[1:]) if shard else 0.0)
    row = np.zeros(model.config.hidden_size, np.float64)  # one decode row's partial sums
    comm.Barrier()
    started = time.perf_counter()
    for _ in range(a.allreduces):
        comm.Allreduce(MPI.IN_PLACE, row)
    figures["bare_allreduce_s"] = (time.perf_counter() - started) / a.allreduces
    everyone = comm.gather(figures, root=0)
    if comm.Get_rank() == 0:
        print(json.dumps({"ranks": comm.Get_size(), "threads": model.threads, "per_rank": everyone}))


def find_mpiexec() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = beside if os.access(beside, os.X_OK) else shutil.which("mpiexec")
    if found is None:
        sys.exit("mpi_bench: no mpiexec next to this python or on PATH: pip install 'moecc[mpi]'")
    return found


def run(a: argparse.Namespace) -> list[dict]:
    mpiexec, results = find_mpiexec(), []
    for n in a.ranks:
        command = [mpiexec, "-n", str(n), sys.executable, os.path.abspath(__file__), "--worker", "--model", a.model,
                   "--threads", str(a.threads), "--prompt", str(a.prompt), "--tokens", str(a.tokens),
                   "--rounds", str(a.rounds), "--allreduces", str(a.allreduces)]
        done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            sys.exit(f"mpi_bench: mpiexec -n {n} failed:\n{done.stdout}{done.stderr}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


def report(results: list[dict], out=sys.stdout) -> None:
    print(f"{'N':>2} {'rank':>4} {'experts':>9} {'VmRSS MiB':>10} {'model MiB':>10} {'pp tok/s':>9} {'tg tok/s':>9} "
          f"{'coll. ms/layer':>15} {'coll. share':>12} {'bare allreduce us':>18}", file=out)
    for r in results:
        for f in r["per_rank"]:
            print(f"{r['ranks']:>2} {f['rank']:>4} {'%d-%d' % tuple(f['experts']):>9} {f['vm_rss'] / 2**20:>10.1f} "
                  f"{f['model_resident'] / 2**20:>10.1f} {f['prefill_tok_s']:>9.1f} {f['decode_tok_s']:>9.2f} "
                  f"{f['collective_s_per_layer'] * 1e3:>15.4f} {f['collective_share_of_decode']:>12.1%} "
                  f"{f['bare_allreduce_s'] * 1e6:>18.1f}", file=out)
    base = next((r for r in results if r["ranks"] == 1), None)
    if base:
        one = max(f["vm_rss"] for f in base["per_rank"])
        for r in results:
            if r["ranks"] > 1:
                most = max(f["vm_rss"] for f in r["per_rank"])
                print(f"N = {r['ranks']}: largest per-rank RSS {most / 2**20:.1f} MiB = {most / one:.0%} of one "
                      f"process's {one / 2**20:.1f} MiB", file=out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a .moecc file (every rank reads the same path)")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="rank counts to run (default: 1 2)")
    ap.add_argument("--threads", type=int, default=1, help="threads per rank (default 1)")
    ap.add_argument("--prompt", type=int, default=512, help="prompt tokens (default 512)")
    ap.add_argument("--tokens", type=int, default=64, help="decode steps (default 64)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds after one warm-up (default 3)")
    ap.add_argument("--allreduces", type=int, default=2000, help="bare Allreduces timed (default 2000)")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        worker(a)
        return 0
    results = run(a)
    report(results)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
