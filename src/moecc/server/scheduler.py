"""The engine thread: continuous batching of up to `slots` sequences on one LoadedModel.

Each step is one forward pass over rows of several sequences: first one row for every sequence
that is decoding (the token it sampled last), then prompt rows of sequences still reading their
prompt, as many as the step has rows left (so a long prompt delays the running streams by at
most one chunk of `model.net.rows`). Every sequence whose row produced logits samples its next
token through engine.Decoding, the same code Model.generate runs, so a sequence's tokens do not
depend on its neighbours. A finished or cancelled sequence frees its slot at once.

Each slot keeps the tokens its cache holds after its sequence ends; a new request goes to the
free slot whose cached tokens share the longest prefix with its prompt (then the least recently
used), and only the rest of the prompt is run.

The HTTP side talks to this thread only through `submit` and `Job.cancel`; results come back
through each job's `emit` callback, called on this thread, which must not block (the server
passes one that hands the output to its event loop with call_soon_threadsafe).

Under expert parallelism (the model loaded with a communicator) this runs on rank 0 only: each
step goes to the other ranks first (parallel.StepBroadcast), which run it too; sampling stays
here.  Once the thread has stopped, `broadcast.end()` lets them return.
"""
from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .. import parallel
from ..engine import Decoding, LoadedModel, reusable_prefix
from ..sampler import SamplingParams, log_softmax
from .metrics import Metrics

log = logging.getLogger("moecc.server")


class QueueFull(Exception):
    """Every slot is busy and `max_queue` requests are already waiting."""


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    cached_tokens: int  # prompt tokens whose cache entries a slot already held
    completion_tokens: int
    time_to_first_token: float  # seconds from submit to the first token
    decode_seconds: float  # from the first token to the last


@dataclass(frozen=True)
class TokenOutput:
    """One generated token, as engine.GeneratedToken, with what the request asked for beside it."""
    token: int
    text: str  # the text it adds (stop strings cut, incomplete characters held back)
    finish_reason: str | None  # on the last output: "stop", "length" or "context"
    logprob: float | None = None  # log-probability of `token` under the step's logits
    top_logprobs: tuple[tuple[int, float], ...] = ()  # the most likely tokens, most likely first
    usage: Usage | None = None  # on the last output


class EngineFailure(Exception):
    """Emitted to a job whose step raised: the request failed, the server goes on."""


Emit = Callable[[TokenOutput | EngineFailure], None]


@dataclass(eq=False)
class Job:
    """A request as the scheduler runs it: prompt ids (checked by LoadedModel.check_ids),
    generation settings, and where its outputs go."""
    ids: np.ndarray
    max_tokens: int
    params: SamplingParams
    stops: list[str]
    emit: Emit
    top_logprobs: int | None = None  # None: no logprobs; k: the token's and the k most likely
    id: str = ""
    ignore_eos: bool = False  # EOS tokens do not end it
    submitted: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    # set by the scheduler
    slot: "Slot | None" = None
    fed: int = 0  # prompt tokens in the slot's cache
    cached_tokens: int = 0
    decoding: Decoding | None = None
    pending: int | None = None  # the last sampled token, to feed in the next step
    first_token_at: float | None = None

    def cancel(self) -> None:
        """Stop generating (from any thread): the slot is freed before the next step."""
        self.cancelled = True


@dataclass(eq=False)
class Slot:
    index: int
    cached: list[int] = field(default_factory=list)  # the tokens whose keys and values it holds, in order
    job: Job | None = None
    last_used: int = 0


class Scheduler:
    def __init__(self, model: LoadedModel, max_queue: int, metrics: Metrics):
        self.model = model
        self.max_queue = max_queue
        self.metrics = metrics
        net = model.net
        self.slots = [Slot(i) for i in range(net.cache.slots)]
        self._rows = net.rows
        self.broadcast = parallel.StepBroadcast(net) if net.shard is not None else None
        self._forward = net.forward if self.broadcast is None else self.broadcast.forward
        self._step_rows = {name: np.zeros(net.rows, np.int32) for name in ("tokens", "slots", "positions")}
        self._logit_rows = np.zeros(len(self.slots), np.int32)  # one per sequence at most
        self._logits = np.zeros((len(self.slots), model.config.vocab_size), np.float32)
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: list[Job] = []  # in admission order (prefill goes first come, first served)
        self._wake = threading.Condition()
        self._uses = itertools.count(1)
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- the HTTP side's calls (any thread) ---------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue `job`; QueueFull if `max_queue` jobs already wait for a slot."""
        with self._wake:
            free = sum(slot.job is None for slot in self.slots)
            if len(self._waiting) - free >= self.max_queue:
                raise QueueFull(f"all {len(self.slots)} slots are busy and {self.max_queue} requests are waiting")
            self._waiting.append(job)
            self.metrics.queued.set(len(self._waiting))
            self._wake.notify()

    def cancel(self, job: Job) -> None:
        job.cancel()
        with self._wake:
            if job in self._waiting:
                self._waiting.remove(job)
                self.metrics.queued.set(len(self._waiting))
            self._wake.notify()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="moecc-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """End the engine thread after its current step; whether it ended within `timeout` seconds."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        return self._thread is None or not self._thread.is_alive()

    @property
    def busy_slots(self) -> int:
        return sum(slot.job is not None for slot in self.slots)

    # -- the engine thread --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not (self._stopping or self._waiting or self._running):
                    self._wake.wait()
                if self._stopping:
                    return
            self.step()

    def step(self) -> None:
        """Admit waiting jobs to free slots, then run one forward pass over the running ones."""
        self._drop_cancelled()
        self._admit()
        try:
            if self._running:
                owners = self._run_rows()
                now = time.perf_counter()
                for row, job in enumerate(owners):
                    self._sample(job, self._logits[row], now)
        except Exception as e:  # a bug, not a bad request (requests are checked before they get here)
            log.exception("engine step failed")
            for job in list(self._running):
                job.emit(EngineFailure(f"the engine failed: {e}"))
                job.slot.cached = []  # what the failed step wrote is unknown
                self._release(job, "error")
        finally:
            self.metrics.running.set(len(self._running))
            self.metrics.slots_busy.set(self.busy_slots)

    def _drop_cancelled(self) -> None:
        for job in [j for j in self._running if j.cancelled]:
            self._release(job, "cancelled")

    def _admit(self) -> None:
        with self._wake:
            free = [slot for slot in self.slots if slot.job is None]
            while self._waiting and free:
                job = self._waiting.popleft()
                # the free slot that already holds the longest prefix of the prompt, then the least recently used
                slot = max(free, key=lambda s: (reusable_prefix(s.cached, job.ids), -s.last_used))
                free.remove(slot)
                reused = reusable_prefix(slot.cached, job.ids)
                del slot.cached[reused:]
                slot.job, slot.last_used = job, next(self._uses)
                job.slot, job.fed, job.cached_tokens = slot, reused, reused
                job.decoding = Decoding(self.model, job.ids, job.max_tokens, job.params, job.stops,
                                        ignore_eos=job.ignore_eos)
                self._running.append(job)
                self.metrics.prompt_tokens.inc(len(job.ids))
            self.metrics.queued.set(len(self._waiting))

    def _run_rows(self) -> list[Job]:
        """One forward pass: a row per decoding job, then prompt chunks; the jobs whose logits came out."""
        tokens, slots, positions = (self._step_rows[k] for k in ("tokens", "slots", "positions"))
        owners: list[Job] = []
        T = 0
        for job in self._running:
            if job.pending is not None:
                tokens[T], slots[T], positions[T] = job.pending, job.slot.index, job.decoding.position
                job.slot.cached.append(job.pending)
                self._logit_rows[len(owners)] = T
                owners.append(job)
                T += 1
        for job in self._running:
            if job.pending is None and T < self._rows:
                chunk = job.ids[job.fed:job.fed + self._rows - T]
                n = len(chunk)
                tokens[T:T + n], slots[T:T + n] = chunk, job.slot.index
                positions[T:T + n] = np.arange(job.fed, job.fed + n)
                job.slot.cached.extend(chunk.tolist())
                job.fed += n
                T += n
                if job.fed == len(job.ids):
                    self._logit_rows[len(owners)] = T - 1
                    owners.append(job)
        n = len(owners)
        self._forward(tokens[:T], slots[:T], positions[:T], self._logit_rows[:n], self._logits[:n])
        return owners

    def _sample(self, job: Job, logits: np.ndarray, now: float) -> None:
        logprobs = log_softmax(logits) if job.top_logprobs is not None else None  # before any penalty
        step = job.decoding.next(logits)
        if job.first_token_at is None:
            job.first_token_at = now
            self.metrics.time_to_first_token.observe(now - job.submitted)
        self.metrics.generated_tokens.inc()
        top = ()
        if logprobs is not None and job.top_logprobs:
            best = np.argpartition(logprobs, len(logprobs) - job.top_logprobs)[len(logprobs) - job.top_logprobs:]
            best = best[np.argsort(-logprobs[best], kind="stable")]
            top = tuple((int(t), float(logprobs[t])) for t in best)
        usage = None
        if step.finish_reason:
            usage = self._usage(job, now)
        else:
            job.pending = step.token
        job.emit(TokenOutput(step.token, step.text, step.finish_reason,
                             None if logprobs is None else float(logprobs[step.token]), top, usage))
        if step.finish_reason:
            self._release(job, step.finish_reason)

    def _usage(self, job: Job, now: float) -> Usage:
        return Usage(prompt_tokens=len(job.ids), cached_tokens=job.cached_tokens,
                     completion_tokens=job.decoding.generated,
                     time_to_first_token=(job.first_token_at or now) - job.submitted,
                     decode_seconds=now - (job.first_token_at or now))

    def _release(self, job: Job, reason: str) -> None:
        """Free the job's slot (its cache keeps what was fed) and log the request's line."""
        self._running.remove(job)
        job.slot.job = None
        self.metrics.finished.labels(reason).inc()
        usage = self._usage(job, time.perf_counter())
        steps = usage.completion_tokens - 1
        if steps > 0 and usage.decode_seconds > 0:
            self.metrics.time_per_output_token.observe(usage.decode_seconds / steps)
        speed = steps / usage.decode_seconds if steps > 0 and usage.decode_seconds > 0 else 0.0
        log.info("%s: %d prompt tokens (%d cached), %d generated, first token %.3f s, %.1f tok/s, %s",
                 job.id or "request", usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens,
                 usage.time_to_first_token, speed, reason)
