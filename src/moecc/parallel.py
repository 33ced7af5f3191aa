"""Expert parallelism over MPI: one model across processes (machines), each holding 1/N of the experts.

    mpiexec -n 2 python -m moecc.generate --model qwen3.moecc --prompt "..."
    m = moecc.load("qwen3.moecc", comm=MPI.COMM_WORLD)     # SPMD: every rank makes the same calls

Every rank maps the whole file but reads only its share: attention, norms, routers, the
embedding and the lm_head (everything but the experts) are read and run by every rank, and
each sparse layer's experts are cut into N contiguous ranges, one per rank (`expert_range`).
Contiguous because which experts a prompt routes to is not known at load (no measured
frequency to balance by), and because a rank's slice of each stacked [E, rows, cols] expert
tensor is then one byte range of the file.  The other ranks' experts are never read (the
kernels skip them, Model.touch skips them too) and never mapped into this process: the kernel
maps the pages around a fault, and whole large folios of the page cache, which on a machine
shared by several ranks hold the others' experts, so ModelSource.keep_to madvises those byte
ranges into mapping regions of their own.

A step: each rank runs attention and the router itself (cheaper than broadcasting their result),
computes its own experts' weighted outputs for the rows routed to them (the rows routed
elsewhere get 0 from it), and one Allreduce (sum) of the [T, hidden] partial outputs per
sparse layer combines them before the residual add (forward.c calls `sum_over_ranks` through
the binding).  The partial outputs are float64, as one process sums its experts' outputs
(moe.c): the ranks' sum then rounds to the float32 one process gets, whatever the order MPI
adds them in.  (A float32 sum in another order moves logits by ~1e-7 in f32 files, but in q4
files that ulp now and then flips an activation's 8-bit rounding: up to 1e-2 at a few positions
of the fixtures' long prompts.)  That is twice float32's bytes: 16 KiB per token per layer at
Qwen3-30B-A3B's width.  Rank 0 samples; the token is broadcast, so every rank's KV cache holds
the same tokens.

Under the server (`mpiexec -n N moecc-serve`) only rank 0 runs HTTP and the scheduler: each
step's rows (tokens, cache slots, positions) are broadcast to the other ranks before rank 0 runs
the step (`StepBroadcast`), and the other ranks run the same step (`follow_steps`) without
logits, which only rank 0 samples from.  A follower waits for the next step polling, then
sleeping between polls, so that an idle server's followers take no CPU (MPI's own blocking
waits spin).  A step that raises ends the job: the ranks could no longer be known to agree.

mpi4py is imported only here, and only when a communicator is used (or the command-line tools
find themselves under mpiexec with more than one rank): a plain install never needs it.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field

import numpy as np


class ShardError(ValueError):
    """The ranks of an expert-parallel job cannot run the model together (raised on every rank)."""


# What launchers tell a process about its job: MPICH's Hydra (and Intel MPI, MVAPICH) set PMI_SIZE,
# Open MPI sets OMPI_COMM_WORLD_SIZE.
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")


def launched_ranks() -> int:
    """How many ranks the MPI launcher started this process among (1 when not under mpiexec)."""
    for name in _SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def world():
    """MPI.COMM_WORLD, importing mpi4py (which initialises MPI); ShardError if it is not installed."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise ShardError("expert parallelism needs mpi4py and an MPI library: pip install 'moecc[mpi]'") from None
    return MPI.COMM_WORLD


def expert_range(experts: int, rank: int, ranks: int) -> tuple[int, int]:
    """The experts [begin, end) of rank `rank` of `ranks`: contiguous, sizes differing by at most one."""
    return rank * experts // ranks, (rank + 1) * experts // ranks


def agree(comm, digest: str | None, error: BaseException | None, settings: dict | None = None) -> None:
    """Collectively: every rank raises the same ShardError if any rank failed to load (`error`),
    if the ranks' model files differ (`digest`: ModelSource.digest, of the file's header) or if
    their `settings` do (what every rank must run alike, e.g. the KV cache's length, slots and
    type: each rank runs attention over its own); returns on every rank otherwise."""
    outcomes = comm.allgather((digest, settings, None if error is None else f"{error}"))
    messages = {message for _, _, message in outcomes}
    if len(messages) == 1 and None not in messages:  # every rank failed alike
        raise ShardError(messages.pop()) from error
    for rank, (_, _, message) in enumerate(outcomes):
        if message is not None:
            raise ShardError(f"rank {rank} of {comm.Get_size()} could not load the model: {message}") from error
    first_digest, first_settings, _ = outcomes[0]
    for rank, (other, other_settings, _) in enumerate(outcomes):
        if other != first_digest:
            raise ShardError(f"rank {rank} has a different model file than rank 0 (header digests "
                             f"{other[:12]} and {first_digest[:12]}); give every rank the same file")
        if other_settings != first_settings:
            raise ShardError(f"rank {rank} runs with {_listed(other_settings)} but rank 0 with "
                             f"{_listed(first_settings)}; give every rank the same")


def _listed(settings: dict) -> str:
    return ", ".join(f"{name}={value!r}" for name, value in settings.items())


@dataclass
class ExpertShard:
    """This process's part of an expert-parallel job: experts [begin, end) of every sparse layer,
    and the communicator of the ranks holding the others.  `reduce_seconds` / `reduces` count
    the time spent in (and the number of) the per-layer sums, waiting for the slowest rank
    included."""
    comm: object  # an mpi4py communicator
    begin: int
    end: int
    reduce_seconds: float = 0.0
    reduces: int = 0
    _in_place: object = field(default=None, repr=False)

    @classmethod
    def of(cls, comm, experts: int) -> "ExpertShard":
        """The shard of comm's rank for a model with `experts` experts per sparse layer;
        ShardError if there are more ranks than experts."""
        from mpi4py import MPI
        ranks = comm.Get_size()
        if ranks > experts:
            raise ShardError(f"{ranks} ranks but the model has {experts} experts per layer; every rank needs "
                             f"at least one: run at most {experts} ranks")
        begin, end = expert_range(experts, comm.Get_rank(), ranks)
        return cls(comm, begin, end, _in_place=MPI.IN_PLACE)

    @property
    def rank(self) -> int:
        return self.comm.Get_rank()

    @property
    def experts(self) -> tuple[int, int]:
        return self.begin, self.end

    def sum_over_ranks(self, values) -> None:
        """values (float64, contiguous) summed in place over the ranks.  A failed Allreduce leaves
        the other ranks waiting in theirs, so it ends the whole job, saying which rank saw what."""
        started = time.perf_counter()
        try:
            self.comm.Allreduce(self._in_place, values)
        except Exception as e:  # mpi4py raises MPI.Exception (errors return as exceptions)
            abort(f"the sum of the experts' outputs failed ({e})")
        self.reduce_seconds += time.perf_counter() - started
        self.reduces += 1

    def broadcast_token(self, token: int | None) -> int:
        """Rank 0's token, on every rank."""
        return self.comm.bcast(token, root=0)


def abort(message: str, code: int = 1) -> None:
    """End every rank of the job (MPI.COMM_WORLD) with `code`, printing `message` after this
    rank's number."""
    from mpi4py import MPI
    world = MPI.COMM_WORLD
    print(f"moecc: rank {world.Get_rank()} of {world.Get_size()}: {message}; ending the job", file=sys.stderr,
          flush=True)
    # the launcher forwards this rank's stderr from a pipe that MPI_Abort's kill can cut short:
    # give it a moment to carry the message out first
    time.sleep(0.5)
    world.Abort(code)
    os._exit(code)  # MPICH's MPI_Abort can return before the launcher has ended this process


def ranks_on_this_host(comm) -> int:
    """How many of comm's ranks run on this machine (they share its cores)."""
    from mpi4py import MPI
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return local.Get_size()
    finally:
        local.Free()


# ---- a server's steps: rank 0 decides them, every rank runs them ------------------------------

END_OF_STEPS = -1  # the row count of the message that tells the followers the server has stopped
SPIN_SECONDS = 0.02  # after a step a follower polls for the next this long (steps come back to back)...
SHORTEST_PAUSE, LONGEST_PAUSE = 0.0005, 0.02  # ...then sleeps between polls, each pause twice the last


class StepMessage:
    """A step's rows as rank 0 broadcasts them, in one int32 array of a size every rank knows:
    [T, tokens (rows), slots (rows), positions (rows)], of which the first T of each are used."""

    def __init__(self, rows: int):
        self.array = np.zeros(1 + 3 * rows, np.int32)
        self.tokens, self.slots, self.positions = (self.array[1 + i * rows:1 + (i + 1) * rows] for i in range(3))

    @property
    def count(self) -> int:
        return int(self.array[0])


class StepBroadcast:
    """Rank 0 of a server: `forward` (as Transformer.forward) sends the step's rows to the other
    ranks, which run it too (`follow_steps`), then runs it here; `end` lets them return."""

    def __init__(self, net):
        self._net = net
        self._comm = net.shard.comm
        self._message = StepMessage(net.rows)

    def forward(self, tokens, slots, positions, logit_rows, logits) -> None:
        m, T = self._message, len(tokens)
        m.array[0] = T
        m.tokens[:T], m.slots[:T], m.positions[:T] = tokens, slots, positions
        self._send()
        try:
            self._net.forward(tokens, slots, positions, logit_rows, logits)
        except Exception as e:
            abort(f"a step failed ({e}) after the other ranks were sent it")

    def end(self) -> None:
        """The followers return from follow_steps (call it once no step can come any more)."""
        self._message.array[0] = END_OF_STEPS
        self._send()

    def _send(self) -> None:
        try:
            self._comm.Ibcast(self._message.array, root=0).Wait()
        except Exception as e:  # MPI.Exception
            abort(f"sending a step to the other ranks failed ({e})")


class StopSignals:
    """SIGINT and SIGTERM noted instead of acted on, from construction on, so that a server's
    ranks end in order: rank 0 stops serving (uvicorn handles the signals while it serves, then
    raises them again: here they are only noted), then ends the others, which mpiexec sent the
    signal too."""

    def __init__(self):
        self.name: str | None = None
        self.at: float | None = None  # time.monotonic() of the first
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._note)

    def _note(self, signum, frame) -> None:
        if self.at is None:
            self.name, self.at = signal.Signals(signum).name, time.monotonic()


def follow_steps(net, stop: StopSignals, grace: float) -> None:
    """A server's other ranks: run every step rank 0 sends (StepBroadcast) until it ends them.
    If a signal came (`stop`) and rank 0 has not ended them `grace` seconds later (the signal was
    this rank's alone, or rank 0 is stuck), the job is ended."""
    comm = net.shard.comm
    message = StepMessage(net.rows)
    no_rows = np.zeros(0, np.int32)
    no_logits = np.zeros((0, net.cfg.vocab_size), np.float32)
    while True:
        _wait(comm.Ibcast(message.array, root=0), stop, grace)
        T = message.count
        if T == END_OF_STEPS:
            return
        try:
            net.forward(message.tokens[:T], message.slots[:T], message.positions[:T], no_rows, no_logits)
        except Exception as e:
            abort(f"a step failed ({e})")


def _wait(request, stop: StopSignals, grace: float) -> None:
    """Until `request` (an MPI request) completes: polling, after SPIN_SECONDS sleeping between
    polls (the longest pause bounds what an idle server adds to the next request's first step)."""
    started = time.monotonic()
    pause = SHORTEST_PAUSE
    while True:
        now = time.monotonic()
        if stop.at is not None and now - stop.at > grace:
            abort(f"stopped by {stop.name}, and rank 0 did not end the server within {grace:g} s")
        if request.Test():
            return
        if now - started > SPIN_SECONDS:
            time.sleep(pause)
            pause = min(2 * pause, LONGEST_PAUSE)
