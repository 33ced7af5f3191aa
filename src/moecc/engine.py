"""The public Model: a loaded model file's logits and generated text.

    m = moecc.load("qwen3.moecc")
    for step in m.generate("Once upon a time", max_tokens=64):
        print(step.text, end="", flush=True)

A Model owns one context (its KV cache); `logits` and `generate` each start from an empty one.
What it shares with the server (moecc.server), which decodes many sequences at once:
`LoadedModel` (the file, tokenizer, templates, sampling defaults and the network with a KV cache
of `slots` sequences, checked against the memory available) and `Decoding` (one sequence's
generation after its prompt: sampling, text cut at stop strings, when it finishes).
With `comm` (an mpi4py communicator of more than one rank) the experts are shared out between
the ranks (moecc.parallel): every rank makes the same calls and gets the same results.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import chat_template, memory, parallel
from .formats import FormatError
from .loader import open_model
from .model import KV_CACHE_DTYPES, PREFILL_CHUNK, Buffers, KVCache, Transformer
from .sampler import Sampler, SamplingParams
from .tokenizer import StreamDecoder, Tokenizer

DEFAULT_MAX_CTX = 4096


@dataclass(frozen=True)
class GeneratedToken:
    token: int
    text: str  # the text this token adds (may be "" while a character or a stop string is incomplete)
    finish_reason: str | None = None  # on the last token: "stop", "length" or "context"


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens whose cache entries were kept from the previous turn
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    finish_reason: str | None = None

    @property
    def prefilled_tokens(self) -> int:
        """Prompt tokens that went through the network this time."""
        return self.prompt_tokens - self.reused_tokens

    @property
    def prefill_tokens_per_second(self) -> float:
        return self.prefilled_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        # the first generated token comes from the prefill; the others each cost one decode step
        steps = max(self.generated_tokens - 1, 0)
        return steps / self.decode_seconds if self.decode_seconds else 0.0


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


class LoadedModel:
    """A loaded model file: config, tokenizer, chat template, sampling defaults, and the network
    (weights mapped) with a KV cache of `slots` sequences of `ctx` positions each."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, ctx: int | None = None,
                 kv_cache: str = "f16", slots: int = 1, comm=None):
        if comm is not None and comm.Get_size() > 1:
            self._load_shard(path, threads, ctx, kv_cache, slots, comm)
        else:
            self._load(path, default_threads() if threads is None else threads, ctx, kv_cache, slots, comm=None)

    def _load_shard(self, path, threads: int | None, ctx: int | None, kv_cache: str, slots: int, comm) -> None:
        """Every rank loads its shard, then the ranks agree: if any failed, or their files or
        caches differ, every rank raises the same ShardError (so that none is left waiting for
        the others).  The ranks on one machine share its cores by default."""
        per_rank = max(default_threads() // parallel.ranks_on_this_host(comm), 1)
        error = None
        try:
            self._load(path, per_rank if threads is None else threads, ctx, kv_cache, slots, comm)
        except Exception as e:
            error = e
        try:
            parallel.agree(comm, None if error else self.source.digest, error,
                           None if error else {"ctx": self.ctx, "slots": self.net.cache.slots, "kv_cache": kv_cache})
        except parallel.ShardError:
            if error is None:
                self.source.close()
            raise

    def _load(self, path, threads: int, ctx: int | None, kv_cache: str, slots: int, comm) -> None:
        if not isinstance(threads, (int, np.integer)) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        if kv_cache not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache must be one of {', '.join(KV_CACHE_DTYPES)}, got {kv_cache!r}")
        if not isinstance(slots, (int, np.integer)) or slots < 1:
            raise ValueError(f"slots must be a positive integer, got {slots!r}")
        self.source = open_model(path)
        self.path = self.source.path
        try:
            self.config = self.source.config
            max_ctx = self.config.max_position_embeddings
            ctx = min(max_ctx, DEFAULT_MAX_CTX) if ctx is None else ctx
            if not isinstance(ctx, (int, np.integer)) or ctx < 1:
                raise ValueError(f"ctx must be a positive integer, got {ctx!r}")
            if ctx > max_ctx:
                warnings.warn(f"ctx {ctx} is longer than the model was trained for "
                              f"(max_position_embeddings {max_ctx}); quality may drop past that",
                              stacklevel=6 if comm else 5)  # the caller of moecc.load
            self._read_embedded_files()
            shard = parallel.ExpertShard.of(comm, self.config.num_experts) if comm else None
            if shard:
                self.source.keep_to(shard.experts)
            buffers = Buffers(self.config, PREFILL_CHUNK)
            self.memory_plan = memory.plan_memory(self.config, kv_cache, ctx=int(ctx), buffers=buffers.nbytes,
                                                  weights=self.source.read_bytes(shard.experts if shard else None),
                                                  slots=int(slots))
            # the warnings blame the caller of moecc.load (load -> Model -> LoadedModel -> _load)
            memory.check_memory(self.memory_plan, memory.available_memory(), stacklevel=7 if comm else 6)
            cache = KVCache(self.config, int(slots), int(ctx), kv_cache)
            self.net = Transformer(self.config, self.source.weights, buffers, cache, int(threads), shard)
        except BaseException:
            self.source.close()
            raise

    def _read_embedded_files(self) -> None:
        files = self.source.files
        if "tokenizer.json" not in files:
            raise FormatError(f"{self.path} embeds no tokenizer.json; re-convert it")
        try:
            self.tokenizer = Tokenizer(files["tokenizer.json"], files.get("tokenizer_config.json"))
            generation_config = files.get("generation_config.json")
            self.generation_config: dict = json.loads(generation_config) if generation_config else {}
            if not isinstance(self.generation_config, dict):
                raise ValueError("generation_config.json is not a JSON object")
            self.eos_token_ids = self._eos_ids()
            self.chat_template = self._chat_template()
        except Exception as e:  # tokenizers raises plain Exception for a malformed tokenizer.json
            raise FormatError(f"{self.path}: an embedded tokenizer or generation file is "
                              f"unreadable ({e}); re-convert the model") from None

    def close(self) -> None:
        """Unmap the model file; the Model must not be used afterwards."""
        self.source.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def ctx(self) -> int:
        return self.net.ctx

    @property
    def threads(self) -> int:
        return self.net.threads

    @property
    def rank(self) -> int:
        """This process's rank in its expert-parallel job (0 when it runs alone)."""
        return self.net.shard.rank if self.net.shard else 0

    def touch(self) -> None:
        """Bring the weights this process reads into memory (ModelSource.touch; its shard only)."""
        self.source.touch(self.net.shard.experts if self.net.shard else None)

    def _eos_ids(self) -> frozenset[int]:
        eos = self.generation_config.get("eos_token_id")
        if eos is None:
            eos = list(self.config.eos_token_id) or self.tokenizer.special_token_id("eos_token")
        eos = [] if eos is None else eos if isinstance(eos, list) else [eos]
        return frozenset(int(e) for e in eos)

    def _chat_template(self) -> str | None:
        """The checkpoint's template: chat_template.jinja, else tokenizer_config's chat_template
        (a string, or a list of named templates of which "default" is used)."""
        jinja = self.source.files.get("chat_template.jinja")
        if jinja is not None:
            return jinja.decode("utf-8")
        template = self.tokenizer.config.get("chat_template")
        if isinstance(template, list):
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        return template if isinstance(template, str) else None

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            enable_thinking: bool | None = None, tools: list[dict] | None = None,
                            **template_kwargs) -> str:
        """The prompt text for `messages`, as transformers' apply_chat_template(tokenize=False);
        `template_kwargs` are further variables of the template."""
        if self.chat_template is None:
            raise ValueError(f"{self.path} has no chat template; send raw text with generate()")
        return chat_template.render(self.chat_template, messages, tokenizer_config=self.tokenizer.config,
                                    add_generation_prompt=add_generation_prompt,
                                    enable_thinking=enable_thinking, tools=tools, **template_kwargs)

    def check_ids(self, ids) -> np.ndarray:
        """`ids` as int32, or a ValueError saying why they cannot be a prompt of one slot."""
        ids = np.asarray(ids)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError("token ids must be a flat sequence of integers")
        if ids.size == 0:
            raise ValueError("the prompt is empty; give at least one token")
        bad = ids[(ids < 0) | (ids >= self.config.vocab_size)]
        if bad.size:
            raise ValueError(f"token id {int(bad[0])} is outside the vocabulary (0..{self.config.vocab_size - 1})")
        if ids.size > self.ctx:
            raise PromptTooLong(int(ids.size), self.ctx)
        return ids.astype(np.int32)

    def sampling_params(self, **overrides) -> SamplingParams:
        """Sampling settings: the checkpoint's generation_config.json, then `overrides` (None = keep)."""
        gc = self.generation_config
        params = {}
        if gc.get("do_sample") is False:
            params["temperature"] = 0.0
        for key in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty"):
            if key in gc and gc[key] is not None and key not in params:
                params[key] = gc[key]
        params.update({k: v for k, v in overrides.items() if v is not None})
        return SamplingParams(**params)


class Model(LoadedModel):
    """A loaded model with one context: logits, generation, chat with the cache kept between turns."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, ctx: int | None = None,
                 kv_cache: str = "f16", comm=None):
        super().__init__(path, threads=threads, ctx=ctx, kv_cache=kv_cache, slots=1, comm=comm)
        self.stats = GenerationStats()
        self._cached_ids: list[int] = []  # the tokens whose keys and values the cache holds, in order
        self._last_logits = np.zeros((1, self.config.vocab_size), np.float32)
        self._decode_step = {name: np.zeros(1, np.int32) for name in ("tokens", "slots", "positions", "logit_rows")}

    # -- logits ------------------------------------------------------------------------------

    def logits(self, ids: Sequence[int], statistics=None) -> np.ndarray:
        """float32 [len(ids), vocab]: the logits at every position, from an empty context.
        With `statistics` (a _kernels.Statistics of self.net.step), every matrix's squared
        inputs are added to it (moecc.imatrix)."""
        ids = self.check_ids(ids)
        out = np.empty((len(ids), self.config.vocab_size), np.float32)
        with self._exclusive():
            self._cached_ids = []
            self._feed(ids, 0, out, statistics)
        return out

    def _feed(self, ids: np.ndarray, start: int, logits: np.ndarray | None, statistics=None) -> np.ndarray:
        """Run ids[start:] at positions start.. of the context (the cache already holds
        ids[:start]) in chunks of a step's rows.  With `logits` [len(ids), V], the logits of
        every position run go there; the logits of the last position are returned ([V], a
        view of a reused buffer).  `statistics`: as logits'."""
        rows, last = self.net.rows, self._last_logits
        for chunk in range(start, len(ids), rows):
            tokens = ids[chunk:chunk + rows]
            T = len(tokens)
            positions = np.arange(chunk, chunk + T, dtype=np.int32)
            slots = np.zeros(T, np.int32)
            if logits is not None:
                self.net.forward(tokens, slots, positions, np.arange(T, dtype=np.int32), logits[chunk:chunk + T],
                                 statistics)
            else:
                self.net.forward(tokens, slots, positions, np.array([T - 1], np.int32), last, statistics)
        return (logits[len(ids) - 1] if logits is not None else last[0])

    def _decode(self, token: int, position: int) -> np.ndarray:
        """Feed one token at `position`; its logits ([V], a view of a reused buffer)."""
        step = self._decode_step
        step["tokens"][0], step["positions"][0] = token, position
        self.net.forward(step["tokens"], step["slots"], step["positions"], step["logit_rows"], self._last_logits)
        return self._last_logits[0]

    def _exclusive(self):
        if not self.net.lock.acquire(blocking=False):
            raise RuntimeError("this Model is busy in another thread or an unfinished generation; "
                               "use one Model per thread, and finish or close() a generator before starting another")
        return _Release(self.net.lock)

    # -- generation --------------------------------------------------------------------------

    def generate(self, prompt: str | Sequence[int], max_tokens: int = 256, *, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
                 repetition_penalty: float | None = None, presence_penalty: float | None = None,
                 frequency_penalty: float | None = None, seed: int | None = None,
                 stop: Sequence[str] | str | None = None) -> Iterator[GeneratedToken]:
        """Yield one GeneratedToken per new token; the last carries `finish_reason`.

        `prompt` is text (tokenized as it is, no chat template) or token ids.  Sampling defaults
        come from the checkpoint's generation_config.json; `temperature=0` is greedy.  Generation
        stops at the model's EOS tokens, at any `stop` string (which is not returned), after
        `max_tokens`, or when the context is full."""
        return self._start(prompt, max_tokens, stop, reuse_cache=False, temperature=temperature, top_k=top_k,
                           top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty,
                           presence_penalty=presence_penalty, frequency_penalty=frequency_penalty, seed=seed)

    def chat(self, messages: list[dict], max_tokens: int = 1024, *, enable_thinking: bool | None = None,
             tools: list[dict] | None = None, stop: Sequence[str] | str | None = None,
             **sampling) -> Iterator[GeneratedToken]:
        """Answer the conversation `messages` with the chat template applied; yields as `generate`
        and takes the same sampling keywords.

        The KV cache is kept between calls: a new turn reuses it up to the longest common token
        prefix of the new prompt and what the cache holds, and processes only the rest."""
        prompt = self.apply_chat_template(messages, add_generation_prompt=True,
                                          enable_thinking=enable_thinking, tools=tools)
        return self._start(prompt, max_tokens, stop, reuse_cache=True, **sampling)

    def _start(self, prompt: str | Sequence[int], max_tokens: int, stop, reuse_cache: bool,
               **sampling) -> Iterator[GeneratedToken]:
        """Check the request (eagerly, so mistakes raise at the call), then hand out the generator."""
        if not isinstance(max_tokens, (int, np.integer)) or max_tokens < 0:
            raise ValueError(f"max_tokens must be a non-negative integer, got {max_tokens!r}")
        params = self.sampling_params(**sampling)
        ids = self.check_ids(self.tokenizer.encode(prompt) if isinstance(prompt, str) else prompt)
        stops = [stop] if isinstance(stop, str) else [s for s in (stop or ()) if s]
        return self._generate(ids, max_tokens, params, stops, reuse_cache)

    def _generate(self, ids: np.ndarray, max_tokens: int, params: SamplingParams,
                  stops: list[str], reuse_cache: bool) -> Iterator[GeneratedToken]:
        with self._exclusive():
            reused = reusable_prefix(self._cached_ids, ids) if reuse_cache else 0
            self.stats = stats = GenerationStats(prompt_tokens=len(ids), reused_tokens=reused)
            self._cached_ids = []
            if max_tokens == 0:
                return
            started = time.perf_counter()
            logits = self._feed(ids, reused, None)
            self._cached_ids = ids.tolist()
            stats.prefill_seconds = time.perf_counter() - started
            decoding = Decoding(self, ids, max_tokens, params, stops, shard=self.net.shard)
            started = time.perf_counter()
            while True:
                step = decoding.next(logits)
                stats.generated_tokens = decoding.generated
                stats.finish_reason = step.finish_reason
                stats.decode_seconds = time.perf_counter() - started
                yield step
                if step.finish_reason:
                    return
                logits = self._decode(step.token, decoding.position)
                self._cached_ids.append(step.token)


class PromptTooLong(ValueError):
    """A prompt of more tokens than a slot's context holds."""

    def __init__(self, tokens: int, ctx: int):
        self.tokens, self.ctx = tokens, ctx
        super().__init__(f"the prompt has {tokens} tokens but the context holds {ctx}; "
                         "shorten it or load with a larger ctx=")


class Decoding:
    """One sequence's generation after its prompt: each `next(logits)` samples a token, streams
    its text (held back while it could be the start of a stop string, cut at one) and says
    whether the sequence is finished: an EOS token or a stop string ("stop"), `max_tokens`
    generated ("length"), or the context full ("context")."""

    def __init__(self, model: LoadedModel, ids: np.ndarray, max_tokens: int, params: SamplingParams,
                 stops: list[str], *, shard: parallel.ExpertShard | None = None, ignore_eos: bool = False):
        """`shard`: given when every rank of an expert-parallel job runs this Decoding (Model's
        SPMD calls), so that rank 0's token is sent to all; the server's other ranks run none
        (the next step's rows bring them its tokens).  `ignore_eos`: EOS tokens are text like
        any other and do not end the sequence."""
        self.prompt_tokens = len(ids)
        self.max_tokens = max_tokens
        self.generated = 0
        self._eos = frozenset() if ignore_eos else model.eos_token_ids
        self._ctx = model.ctx
        self._sampler = Sampler(params, ids)
        self._shard = shard
        self._text = _StopFilter(StreamDecoder(model.tokenizer), stops)

    @property
    def position(self) -> int:
        """Where the last sampled token goes when it is fed back."""
        return self.prompt_tokens + self.generated - 1

    def next(self, logits: np.ndarray) -> GeneratedToken:
        """The next token from the logits after the last one (float32 [V]; the penalties may change it)."""
        token = self._sample(logits)
        self.generated += 1
        piece = self._text.add(token) if token not in self._eos else ""
        finish = ("stop" if token in self._eos or self._text.stopped else
                  "length" if self.generated == self.max_tokens else
                  "context" if self.position >= self._ctx else None)
        if finish:
            piece += self._text.flush()
        return GeneratedToken(token, piece, finish)


    def _sample(self, logits: np.ndarray) -> int:
        """The sampled token; in an expert-parallel job rank 0's, sent to every rank, so that all
        caches hold the same tokens."""
        if self._shard is None:
            return self._sampler.sample(logits)
        return self._shard.broadcast_token(self._sampler.sample(logits) if self._shard.rank == 0 else None)


def reusable_prefix(cached: Sequence[int], ids: np.ndarray) -> int:
    """How many leading `ids` a cache holding `cached` (in order) can keep: their common prefix,
    leaving at least one id to run (its logits are needed)."""
    n = min(len(cached), len(ids) - 1)
    differs = np.flatnonzero(np.asarray(cached[:n], dtype=np.int64) != ids[:n])
    return int(differs[0]) if differs.size else n


class _Release:
    def __init__(self, lock):
        self._lock = lock

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._lock.release()


class _StopFilter:
    """Streams text, holding back what could be the start of a stop string, cutting at one."""

    def __init__(self, decoder: StreamDecoder, stops: list[str]):
        self._decoder = decoder
        self._stops = stops
        self._pending = ""
        self.stopped = False

    def add(self, token: int) -> str:
        self._pending += self._decoder.add(token)
        return self._release()

    def flush(self) -> str:
        if not self.stopped:
            self._pending += self._decoder.flush()
        return self._release(final=True)

    def _release(self, final: bool = False) -> str:
        if self.stopped:
            return ""
        hits = [i for i in (self._pending.find(s) for s in self._stops) if i >= 0]
        if hits:
            out, self._pending, self.stopped = self._pending[:min(hits)], "", True
            return out
        keep = 0 if final else max((n for s in self._stops for n in range(1, len(s))
                                    if self._pending.endswith(s[:n])), default=0)
        out, self._pending = self._pending[:len(self._pending) - keep], self._pending[len(self._pending) - keep:]
        return out


def load(path: str | os.PathLike, threads: int | None = None, ctx: int | None = None,
         kv_cache: str = "f16", comm=None) -> Model:
    """Map a .moecc or GGUF file and make it ready to run.  `threads` defaults to the CPUs this process
    may use (with `comm`, shared by the ranks on this machine); `ctx` (the KV cache length) to
    the model's max_position_embeddings, at most 4096; `kv_cache` stores keys and values as
    "f16" (half the memory and the bytes a long context reads per token, as llama.cpp does; keys
    are RMS-normed, values would overflow only past f16's +-65504) or "f32" (exact: what
    transformers computes in float32).  `comm`: an mpi4py communicator (e.g. MPI.COMM_WORLD)
    whose ranks share the experts out (moecc.parallel); every rank calls load and then the same
    methods.  Without one, or with one of one rank, the process runs the whole model."""
    return Model(path, threads=threads, ctx=ctx, kv_cache=kv_cache, comm=comm)
