"""The SPMD programs tests/test_mpi.py runs under mpiexec, one per job:

    python mpi_ranks.py results MODEL... --inputs IN.npz --out DIR   every rank: logits of each prompt
                                                                    and greedy tokens -> DIR/rank{r}.npz
    python mpi_ranks.py endless MODEL --out DIR                      generate until killed; each rank
                                                                    writes its pid to DIR/rank{r}.pid
                                                                    once generating
    python mpi_ranks.py broken MODEL                                 rank 1's communicator breaks (is
                                                                    freed) mid-generation
    python mpi_ranks.py resident MODEL --out DIR                     each rank's resident share of the
                                                                    file after a long prefill, then a
                                                                    touch -> DIR/rank{r}.json
"""
import argparse
import json
import os
import sys

import numpy as np
from mpi4py import MPI

import moecc
from moecc.memory import resident_file_bytes


def results(models: list[str], inputs: str, out: str, comm) -> None:
    with np.load(inputs) as z:
        arrays = {k: z[k] for k in z.files}
    saved = {}
    for m_index, path in enumerate(models):
        with moecc.load(path, threads=1, comm=comm) as model:
            model.eos_token_ids = frozenset()  # exactly the asked number of tokens
            for key, ids in arrays.items():
                if key.startswith("ids_"):
                    saved[f"{m_index}_logits_{key[4:]}"] = model.logits(ids.tolist())
                elif key.startswith("greedy_"):
                    steps = model.generate(ids.tolist(), max_tokens=int(arrays["greedy_tokens"][0]), temperature=0)
                    saved[f"{m_index}_{key}"] = np.array([s.token for s in steps])
    np.savez(os.path.join(out, f"rank{comm.Get_rank()}.npz"), **saved)


def endless(path: str, out: str, comm) -> None:
    model = moecc.load(path, threads=1, ctx=512, comm=comm)
    model.eos_token_ids = frozenset()
    while True:
        for i, _ in enumerate(model.generate(list(range(3, 40)), max_tokens=400, temperature=1.0, seed=1)):
            if i == 1:
                with open(os.path.join(out, f"rank{comm.Get_rank()}.pid.partial"), "w") as f:
                    f.write(str(os.getpid()))
                os.replace(f.name, f.name[:-len(".partial")])  # appears whole


def broken(path: str, comm) -> None:
    model = moecc.load(path, threads=1, comm=comm.Dup())
    model.eos_token_ids = frozenset()
    for i, _ in enumerate(model.generate(list(range(3, 40)), max_tokens=40, temperature=0)):
        if i == 5 and comm.Get_rank() == 1:
            model.net.shard.comm.Free()  # its next Allreduce fails; rank 0 waits in its own


def resident(path: str, out: str, comm) -> None:
    with moecc.load(path, threads=1, comm=comm) as model:
        shard = model.net.shard
        model.logits((np.arange(256) * 7 % model.config.vocab_size).tolist())  # routes to every expert
        after_prefill = resident_file_bytes(path)
        model.touch()
        report = {"prefill": after_prefill, "touched": resident_file_bytes(path),
                  "shard_bytes": model.source.read_bytes(shard.experts), "all_bytes": model.source.read_bytes(),
                  "experts": shard.experts}
    with open(os.path.join(out, f"rank{comm.Get_rank()}.json"), "w") as f:
        json.dump(report, f)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("job", choices=("results", "endless", "broken", "resident"))
    ap.add_argument("models", nargs="+")
    ap.add_argument("--inputs")
    ap.add_argument("--out")
    a = ap.parse_args()
    comm = MPI.COMM_WORLD
    if a.job == "results":
        results(a.models, a.inputs, a.out, comm)
    elif a.job == "endless":
        endless(a.models[0], a.out, comm)
    elif a.job == "broken":
        broken(a.models[0], comm)
    else:
        resident(a.models[0], a.out, comm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
