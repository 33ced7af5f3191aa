"""Choosing the next token from the logits: greedy, or temperature / top-k / top-p / min-p sampling
with repetition, presence and frequency penalties, in that order (as transformers applies them;
the presence and frequency penalties are OpenAI's: `logit -= presence * (count > 0) + frequency * count`
over the tokens generated so far).

Per token the work is a partial selection over the vocabulary (`argpartition`), never a full
sort of all 151,936 logits.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_TOP_P_FIRST_GUESS = 64  # candidates tried first for top-p without top-k; doubled until enough


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy
    top_k: int = 0  # 0 means no limit
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # >1 discourages every token seen so far (prompt and output)
    presence_penalty: float = 0.0  # subtracted once from every token already generated
    frequency_penalty: float = 0.0  # subtracted from a generated token once per time it was generated
    seed: int | None = None

    def __post_init__(self):
        checks = [
            (self.temperature >= 0, f"temperature must be >= 0 (0 is greedy), got {self.temperature}"),
            (self.top_k >= 0, f"top_k must be >= 0 (0 disables it), got {self.top_k}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (0 <= self.min_p < 1, f"min_p must be in [0, 1), got {self.min_p}"),
            (self.repetition_penalty > 0, f"repetition_penalty must be > 0, got {self.repetition_penalty}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


class Sampler:
    def __init__(self, params: SamplingParams, prompt_ids=()):
        self.params = params
        self._rng = np.random.default_rng(params.seed)
        self._seen = np.unique(np.asarray(prompt_ids, dtype=np.int64))  # for the repetition penalty
        self._generated = np.zeros(0, dtype=np.int64)  # distinct generated tokens (presence, frequency)
        self._counts = np.zeros(0, dtype=np.int64)  # how often each of them was generated (frequency)

    def sample(self, logits: np.ndarray) -> int:
        """The next token.  `logits` (float32 [vocab]) may be modified in place by the penalties."""
        p = self.params
        self._apply_penalties(logits)
        if p.greedy:
            token = int(np.argmax(logits))
        else:
            candidates = self._top_candidates(logits)
            probs = _softmax(logits[candidates].astype(np.float64) / p.temperature)
            keep = len(probs)
            if p.top_p < 1:
                # smallest set whose probability reaches top_p (at least one token)
                keep = min(keep, int(np.searchsorted(np.cumsum(probs), p.top_p)) + 1)
            if p.min_p > 0:
                keep = min(keep, int(np.count_nonzero(probs >= p.min_p * probs[0])))
            probs = probs[:keep] / probs[:keep].sum()
            token = int(candidates[self._rng.choice(keep, p=probs)])
        self._record(token)
        return token

    def _top_candidates(self, logits: np.ndarray) -> np.ndarray:
        """Token ids that may be sampled, sorted by descending logit."""
        p = self.params
        vocab = len(logits)
        k = p.top_k if 0 < p.top_k < vocab else vocab
        if k == vocab and p.top_p < 1:
            # top-p alone: grow a candidate set until it holds top_p of the probability mass
            k = min(_TOP_P_FIRST_GUESS, vocab)
            scaled = logits.astype(np.float64) / p.temperature
            log_total = _logsumexp(scaled)
            while k < vocab:
                top = _top_k_sorted(scaled, k)
                if np.exp(_logsumexp(scaled[top]) - log_total) >= p.top_p:
                    return top
                k *= 2
        return _top_k_sorted(logits, min(k, vocab))

    def _apply_penalties(self, logits: np.ndarray) -> None:
        p = self.params
        if p.repetition_penalty != 1 and len(self._seen):
            seen = logits[self._seen]
            logits[self._seen] = np.where(seen > 0, seen / p.repetition_penalty, seen * p.repetition_penalty)
        if len(self._generated) and (p.presence_penalty or p.frequency_penalty):
            logits[self._generated] -= p.presence_penalty + p.frequency_penalty * self._counts

    def _record(self, token: int) -> None:
        p = self.params
        if p.repetition_penalty != 1 and token not in self._seen:
            self._seen = np.append(self._seen, token)
        if p.presence_penalty or p.frequency_penalty:
            at = np.flatnonzero(self._generated == token)
            if at.size:
                self._counts[at[0]] += 1
            else:
                self._generated = np.append(self._generated, token)
                self._counts = np.append(self._counts, 1)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float32 log-probabilities of `logits` [vocab] (what OpenAI's logprobs report), in float64 arithmetic."""
    x = logits.astype(np.float64)
    return (x - _logsumexp(x)).astype(np.float32)


def _top_k_sorted(values: np.ndarray, k: int) -> np.ndarray:
    if k < len(values):
        top = np.argpartition(values, len(values) - k)[len(values) - k:]
    else:
        top = np.arange(len(values))
    return top[np.argsort(-values[top], kind="stable")]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _logsumexp(x: np.ndarray) -> float:
    m = float(x.max())
    return m + float(np.log(np.exp(x - m).sum()))
