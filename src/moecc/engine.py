"""The public Model: a loaded model file's logits and generated text.

    m = moecc.load("qwen3.moecc")
    for step in m.generate("Once upon a time", max_tokens=64):
        print(step.text, end="", flush=True)

A Model owns one context (its KV cache); `logits` and `generate` each start from an empty one.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import chat_template, memory
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


class Model:
    """A loaded model: config, tokenizer, weights (mapped), one context."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, ctx: int | None = None,
                 kv_cache: str = "f16"):
        threads = default_threads() if threads is None else threads
        if not isinstance(threads, (int, np.integer)) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        if kv_cache not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache must be one of {', '.join(KV_CACHE_DTYPES)}, got {kv_cache!r}")
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
                              f"(max_position_embeddings {max_ctx}); quality may drop past that", stacklevel=3)
            self._read_embedded_files()
            buffers = Buffers(self.config, PREFILL_CHUNK)
            plan = memory.plan_memory(self.config, kv_cache, ctx=int(ctx), buffers=buffers.nbytes,
                                      weights=self.source.mapped_bytes)
            memory.check_memory(plan, memory.available_memory(), stacklevel=4)
            cache = KVCache(self.config, 1, int(ctx), kv_cache)
            self.net = Transformer(self.config, self.source.weights, buffers, cache, int(threads))
        except BaseException:
            self.source.close()
            raise
        self.stats = GenerationStats()
        self._cached_ids: list[int] = []  # the tokens whose keys and values the cache holds, in order
        self._last_logits = np.zeros((1, self.config.vocab_size), np.float32)
        self._decode_step = {name: np.zeros(1, np.int32) for name in ("tokens", "slots", "positions", "logit_rows")}

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

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def ctx(self) -> int:
        return self.net.ctx

    @property
    def threads(self) -> int:
        return self.net.threads

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
                            enable_thinking: bool | None = None, tools: list[dict] | None = None) -> str:
        """The prompt text for `messages`, as transformers' apply_chat_template(tokenize=False)."""
        if self.chat_template is None:
            raise ValueError(f"{self.path} has no chat template; send raw text with generate()")
        return chat_template.render(self.chat_template, messages, tokenizer_config=self.tokenizer.config,
                                    add_generation_prompt=add_generation_prompt,
                                    enable_thinking=enable_thinking, tools=tools)

    # -- logits ------------------------------------------------------------------------------

    def _check_ids(self, ids) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError("token ids must be a flat sequence of integers")
        if ids.size == 0:
            raise ValueError("the prompt is empty; give at least one token")
        bad = ids[(ids < 0) | (ids >= self.config.vocab_size)]
        if bad.size:
            raise ValueError(f"token id {int(bad[0])} is outside the vocabulary (0..{self.config.vocab_size - 1})")
        if ids.size > self.ctx:
            raise ValueError(f"the prompt has {ids.size} tokens but the context holds {self.ctx}; "
                             "shorten it or load with a larger ctx=")
        return ids.astype(np.int32)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """float32 [len(ids), vocab]: the logits at every position, from an empty context."""
        ids = self._check_ids(ids)
        out = np.empty((len(ids), self.config.vocab_size), np.float32)
        with self._exclusive():
            self._cached_ids = []
            self._feed(ids, 0, out)
        return out

    def _feed(self, ids: np.ndarray, start: int, logits: np.ndarray | None) -> np.ndarray:
        """Run ids[start:] at positions start.. of the context (the cache already holds
        ids[:start]) in chunks of a step's rows.  With `logits` [len(ids), V], the logits of
        every position run go there; the logits of the last position are returned ([V], a
        view of a reused buffer)."""
        rows, last = self.net.rows, self._last_logits
        for chunk in range(start, len(ids), rows):
            tokens = ids[chunk:chunk + rows]
            T = len(tokens)
            positions = np.arange(chunk, chunk + T, dtype=np.int32)
            slots = np.zeros(T, np.int32)
            if logits is not None:
                self.net.forward(tokens, slots, positions, np.arange(T, dtype=np.int32), logits[chunk:chunk + T])
            else:
                self.net.forward(tokens, slots, positions, np.array([T - 1], np.int32), last)
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

    def generate(self, prompt: str | Sequence[int], max_tokens: int = 256, *, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
                 repetition_penalty: float | None = None, presence_penalty: float | None = None,
                 seed: int | None = None, stop: Sequence[str] | str | None = None) -> Iterator[GeneratedToken]:
        """Yield one GeneratedToken per new token; the last carries `finish_reason`.

        `prompt` is text (tokenized as it is, no chat template) or token ids.  Sampling defaults
        come from the checkpoint's generation_config.json; `temperature=0` is greedy.  Generation
        stops at the model's EOS tokens, at any `stop` string (which is not returned), after
        `max_tokens`, or when the context is full."""
        return self._start(prompt, max_tokens, stop, reuse_cache=False, temperature=temperature, top_k=top_k,
                           top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty,
                           presence_penalty=presence_penalty, seed=seed)

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
        ids = self._check_ids(self.tokenizer.encode(prompt) if isinstance(prompt, str) else prompt)
        stops = [stop] if isinstance(stop, str) else [s for s in (stop or ()) if s]
        return self._generate(ids, max_tokens, params, stops, reuse_cache)

    def _reusable_prefix(self, ids: np.ndarray) -> int:
        """How many leading ids the cache already holds (at least one id is left to run)."""
        n = min(len(self._cached_ids), len(ids) - 1)
        cached = np.asarray(self._cached_ids[:n], dtype=np.int64)
        differs = np.flatnonzero(cached != ids[:n])
        return int(differs[0]) if differs.size else n

    def _generate(self, ids: np.ndarray, max_tokens: int, params: SamplingParams,
                  stops: list[str], reuse_cache: bool) -> Iterator[GeneratedToken]:
        with self._exclusive():
            reused = self._reusable_prefix(ids) if reuse_cache else 0
            self.stats = stats = GenerationStats(prompt_tokens=len(ids), reused_tokens=reused)
            self._cached_ids = []
            if max_tokens == 0:
                return
            started = time.perf_counter()
            logits = self._feed(ids, reused, None)
            self._cached_ids = ids.tolist()
            stats.prefill_seconds = time.perf_counter() - started
            sampler = Sampler(params, ids)
            text = _StopFilter(StreamDecoder(self.tokenizer), stops)
            started = time.perf_counter()
            for i in range(max_tokens):
                token = sampler.sample(logits)
                position = len(ids) + i  # where this token goes if it is fed back
                piece = text.add(token) if token not in self.eos_token_ids else ""
                finish = ("stop" if token in self.eos_token_ids or text.stopped else
                          "length" if i + 1 == max_tokens else
                          "context" if position >= self.ctx else None)
                if finish:
                    piece += text.flush()
                stats.generated_tokens = i + 1
                stats.finish_reason = finish
                stats.decode_seconds = time.perf_counter() - started
                yield GeneratedToken(token, piece, finish)
                if finish:
                    return
                logits = self._decode(token, position)
                self._cached_ids.append(token)


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
         kv_cache: str = "f16") -> Model:
    """Map a .moecc or GGUF file and make it ready to run.  `threads` defaults to the CPUs this process
    may use; `ctx` (the KV cache length) to the model's max_position_embeddings, at most 4096;
    `kv_cache` stores keys and values as "f16" (half the memory and the bytes a long context
    reads per token, as llama.cpp does; keys are RMS-normed, values would overflow only past
    f16's +-65504) or "f32" (exact: what transformers computes in float32)."""
    return Model(path, threads=threads, ctx=ctx, kv_cache=kv_cache)
