"""moecc-perplexity: a model's perplexity over a text and, against a reference run's saved
logits, its KL divergence from it -- scored as llama.cpp's llama-perplexity scores them.

    moecc-perplexity --model bf16.moecc --text heldout.txt --save-base bf16.base
    moecc-perplexity --model q4.moecc --text heldout.txt --base bf16.base [--json]

Windows (llama.cpp tools/perplexity/perplexity.cpp, `perplexity` and `kl_divergence`): the
text's tokens, as the model's tokenizer encodes it, are cut into floor(n / ctx) windows of ctx
tokens, each run from an empty context.  In a window the logits at positions ctx/2 .. ctx-2
score the token that follows, so every counted token has at least ctx/2 tokens before it
(ctx - 1 - ctx/2 tokens per window).  Qwen3's tokenizers add no BOS token, and llama.cpp puts
one at the start of a window only for a vocabulary that asks for it, so the windows are the
text's tokens as they are.  A text shorter than 2 x ctx tokens is refused, as llama.cpp does.

Scores, per counted token t with next token y (p: this model's softmax, p_base: the base's):
    NLL      -log p(y);  PPL = exp(mean NLL)
    KLD      sum over v with log p_base(v) > -16 of p_base(v) (log p_base(v) - log p(v))
    same top argmax p == argmax p_base          ("top1": the fraction of tokens where they agree)
    dp       p(y) - p_base(y);  RMS dp = sqrt(mean dp^2)
and the KLD's mean with a 95% interval (mean -+ 1.96 standard errors; llama.cpp prints one
standard error), median and 99th percentile (linear interpolation between order statistics).

The base file is llama.cpp's --kl-divergence-base file, byte for byte, so either tool reads the
other's: b"_logits_", uint32 ctx, int32 n_vocab, int32 n_windows, int32 tokens[n_windows * ctx],
then per counted token (window by window) a row of nv = 2 * ceil(n_vocab / 2) + 4 uint16: its
first 8 bytes the float32 pair (scale, min_log_prob), then n_vocab uint16 q with
log p_base(v) = scale * q + min_log_prob: the full log-softmax over the 16 nats below the
largest logit in 65,535 steps (scale <= 16 / 65535, so within 1.3e-4 of the exact value), values
further down stored as 0 (they are then below -16 and left out of the KLD, as llama.cpp does).
Every token of the vocabulary is kept, never a top-k.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass

import numpy as np

BASE_MAGIC = b"_logits_"
LOG_PROB_RANGE = 16.0  # nats below the largest logit that a base row resolves
KLD_FLOOR = -16.0  # base log-probs at or below this are left out of the KLD (llama.cpp)
DEFAULT_CTX = 512
MIN_CTX = 4


class PerplexityError(ValueError):
    """The text, the context length or the base file cannot be scored as asked."""


def windows(tokens, ctx: int) -> np.ndarray:
    """int32 [floor(len / ctx), ctx]: the windows llama-perplexity runs; at least two."""
    tokens = np.asarray(tokens)
    if ctx < MIN_CTX:
        raise PerplexityError(f"--ctx must be at least {MIN_CTX}, got {ctx}")
    if len(tokens) < 2 * ctx:
        raise PerplexityError(f"the text is {len(tokens)} tokens long, but a context of {ctx} needs at least "
                              f"{2 * ctx}: give a longer text or a smaller --ctx")
    n = len(tokens) // ctx
    return tokens[:n * ctx].astype(np.int32).reshape(n, ctx)


def scored(ctx: int) -> slice:
    """The window positions whose logits are counted (each scores the token after it)."""
    return slice(ctx // 2, ctx - 1)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float64 log-probabilities of float logits [..., V]."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return x


# -- the base file (llama.cpp's --kl-divergence-base layout) ------------------------------------

def row_width(n_vocab: int) -> int:
    """uint16 per base row: 4 (the float32 scale and minimum) + n_vocab, rounded up to even."""
    return 2 * ((n_vocab + 1) // 2) + 4


def encode_log_probs(logits: np.ndarray) -> np.ndarray:
    """uint16 [S, row_width(V)]: base rows of logits [S, V], as llama.cpp's log_softmax writes them."""
    logits = logits.astype(np.float32)
    S, V = logits.shape
    top = logits.max(axis=1)
    low = np.maximum(logits.min(axis=1), top - np.float32(LOG_PROB_RANGE))
    log_sum_exp = np.log(np.exp(logits.astype(np.float64) - top[:, None]).sum(axis=1)).astype(np.float32)
    scale = (top - low) / np.float32(65535)
    rows = np.zeros((S, row_width(V)), np.uint16)
    header = rows[:, :4].view(np.float32)  # [S, 2]: what llama.cpp keeps in the first 8 bytes
    header[:, 0] = scale
    header[:, 1] = low - top - log_sum_exp  # min_log_prob
    with np.errstate(divide="ignore", invalid="ignore"):
        steps = np.rint((logits - low[:, None]) * (np.float32(1) / scale)[:, None])
    steps = np.where((logits > low[:, None]) & (scale[:, None] > 0), steps, 0)
    rows[:, 4:4 + V] = steps.astype(np.uint16)
    return rows


def decode_log_probs(rows: np.ndarray, n_vocab: int) -> np.ndarray:
    """float32 [S, V]: the base log-probabilities base rows hold."""
    header = np.ascontiguousarray(rows[:, :4]).view(np.float32)
    scale, min_log_prob = header[:, :1], header[:, 1:2]
    return scale * rows[:, 4:4 + n_vocab].astype(np.float32) + min_log_prob


@dataclass(frozen=True)
class Base:
    """A base file, mapped: its windows and, per window, the rows of its counted tokens."""
    path: str
    ctx: int
    n_vocab: int
    windows: np.ndarray  # int32 [n, ctx]
    rows: np.ndarray  # uint16 [n, ctx - 1 - ctx/2, row_width(n_vocab)]

    @classmethod
    def open(cls, path: str) -> "Base":
        try:
            with open(path, "rb") as f:
                head = f.read(20)
            size = os.path.getsize(path)
        except OSError as e:
            raise PerplexityError(f"cannot read the base file: {e}") from None
        if len(head) < 20 or head[:8] != BASE_MAGIC:
            raise PerplexityError(f"{path} is not a base file (made by --save-base, or llama-perplexity "
                                  "--kl-divergence-base)")
        ctx, n_vocab, n = (int(v) for v in np.frombuffer(head, np.int32, 3, 8))
        counted = ctx - 1 - ctx // 2
        expected = 20 + 4 * n * ctx + 2 * n * counted * row_width(n_vocab)
        if ctx < MIN_CTX or n_vocab < 1 or n < 1 or size != expected:
            raise PerplexityError(f"{path} is truncated or damaged: its header (ctx {ctx}, vocabulary {n_vocab}, "
                                  f"{n} windows) needs {expected} bytes, the file has {size}; save it again")
        data = np.memmap(path, np.uint8, "r")
        windows = data[20:20 + 4 * n * ctx].view(np.int32).reshape(n, ctx)
        rows = data[20 + 4 * n * ctx:].view(np.uint16).reshape(n, counted, row_width(n_vocab))
        return cls(path, ctx, n_vocab, windows, rows)

    def check_matches(self, windows: np.ndarray, n_vocab: int) -> None:
        """PerplexityError unless this base was saved for these windows and this vocabulary."""
        if n_vocab != self.n_vocab:
            raise PerplexityError(f"{self.path} holds the logits of a model with a vocabulary of {self.n_vocab}; "
                                  f"this model has {n_vocab}: save a base with a model of this one's family")
        n = len(self.windows)
        if len(windows) < n or not np.array_equal(windows[:n], self.windows):
            raise PerplexityError(f"{self.path} was saved for another text (or tokenizer): its {n} windows of "
                                  f"{self.ctx} tokens are not this text's; use the text and tokenizer it was saved with")


class BaseWriter:
    """Writes a base file window by window, under a temporary name renamed at close(), so a
    run that stops early leaves no file behind."""

    def __init__(self, path: str, windows: np.ndarray, n_vocab: int):
        self.path = path
        self._tmp = f"{path}.tmp{os.getpid()}"
        try:
            self._f = open(self._tmp, "wb")
        except OSError as e:
            raise PerplexityError(f"cannot write the base file: {e}") from None
        n, ctx = windows.shape
        self._f.write(BASE_MAGIC + np.array([ctx, n_vocab, n], np.int32).tobytes() + windows.astype(np.int32).tobytes())

    def add(self, counted_logits: np.ndarray) -> None:
        self._f.write(encode_log_probs(counted_logits).tobytes())

    def close(self, keep: bool) -> None:
        self._f.close()
        if keep:
            os.replace(self._tmp, self.path)
        else:
            os.unlink(self._tmp)


# -- the comparison with a base ---------------------------------------------------------------

@dataclass
class TokenScores:
    """Per counted token: NLL and, with a base, what llama.cpp's kl_divergence records."""
    nll: list
    nll_base: list
    kld: list
    same_top: list
    p_diff: list

    @classmethod
    def empty(cls) -> "TokenScores":
        return cls([], [], [], [], [])

    def add(self, counted_logits: np.ndarray, window: np.ndarray, base_log_probs: np.ndarray | None = None) -> None:
        """Score one window from the logits of its counted positions (and the base's log-probs there)."""
        counted = scored(len(window))
        next_tokens = window[counted.start + 1:counted.stop + 1]
        log_p = log_softmax(counted_logits)
        rows = np.arange(len(next_tokens))
        nll = -log_p[rows, next_tokens]
        self.nll.append(nll)
        if base_log_probs is None:
            return
        base = base_log_probs.astype(np.float64)
        in_range = base > KLD_FLOOR
        self.kld.append(np.where(in_range, np.exp(base) * (base - log_p), 0.0).sum(axis=1))
        self.same_top.append(counted_logits.argmax(axis=1) == base_log_probs.argmax(axis=1))
        nll_base = -base[rows, next_tokens]
        self.nll_base.append(nll_base)
        self.p_diff.append(np.exp(-nll) - np.exp(-nll_base))


def standard_error(values: np.ndarray) -> float:
    """llama.cpp's uncertainty of a mean: sqrt(variance / (n - 1)), 0 for 10 values or fewer."""
    n = len(values)
    variance = float(np.mean(values ** 2) - np.mean(values) ** 2)
    return float(np.sqrt(variance / (n - 1))) if variance > 0 and n > 10 else 0.0


def percentile(values: np.ndarray, fraction: float) -> float:
    """llama.cpp's percentile: linear interpolation between the sorted values."""
    values = np.sort(values)
    p = fraction * (len(values) - 1)
    i = int(p)
    return float((1 - (p - i)) * values[i] + (p - i) * values[min(i + 1, len(values) - 1)])


def summarize(scores: TokenScores) -> dict:
    """The --json record: tokens, ppl (and its standard error), the KLD statistics, top1, rms_dp."""
    nll = np.concatenate(scores.nll)
    ppl = float(np.exp(nll.mean()))
    out = {"tokens": int(nll.size), "ppl": ppl, "ppl_stderr": ppl * standard_error(nll),
           "kld_mean": None, "kld_ci95": None, "kld_median": None, "kld_p99": None, "top1": None, "rms_dp": None}
    if scores.kld:
        kld = np.concatenate(scores.kld)
        mean, half = float(kld.mean()), 1.96 * standard_error(kld)
        p_diff = np.concatenate(scores.p_diff)
        out.update(kld_mean=mean, kld_ci95=[mean - half, mean + half], kld_median=float(np.median(kld)),
                   kld_p99=percentile(kld, 0.99), top1=float(np.concatenate(scores.same_top).mean()),
                   rms_dp=float(np.sqrt(np.mean(p_diff ** 2))),
                   ppl_base=float(np.exp(np.concatenate(scores.nll_base).mean())))
    return out


# -- the run -----------------------------------------------------------------------------------

def score_model(model, windows: np.ndarray, save_base: str | None = None, base: Base | None = None,
                progress: bool = True) -> dict:
    """Run `model` (a moecc Model) on each window and score it (summarize's record); with
    `save_base`, also write its base file; with `base`, compare with it."""
    from tqdm import tqdm
    n_vocab = model.config.vocab_size
    if base is not None:
        base.check_matches(windows, n_vocab)
        windows = windows[:len(base.windows)]
    ctx = windows.shape[1]
    counted = scored(ctx)
    writer = BaseWriter(save_base, windows, n_vocab) if save_base else None
    scores = TokenScores.empty()
    done = False
    try:
        for i in tqdm(range(len(windows)), desc="windows", unit="window", disable=not progress, file=sys.stderr):
            logits = model.logits(windows[i])[counted]
            if writer is not None:
                writer.add(logits)
            base_log_probs = decode_log_probs(base.rows[i], n_vocab) if base is not None else None
            scores.add(logits, windows[i], base_log_probs)
        done = True
    finally:
        if writer is not None:
            writer.close(keep=done)
    return summarize(scores)


def report(result: dict, n_windows: int, ctx: int) -> str:
    lines = [f"{n_windows} windows of {ctx} tokens, {result['tokens']} tokens counted",
             f"PPL = {result['ppl']:.4f} +/- {result['ppl_stderr']:.4f}"]
    if result["kld_mean"] is not None:
        lo, hi = result["kld_ci95"]
        lines += [f"PPL(base) = {result['ppl_base']:.4f}",
                  f"KLD: mean {result['kld_mean']:.6f} (95%: {lo:.6f} .. {hi:.6f}), median "
                  f"{result['kld_median']:.6f}, 99% {result['kld_p99']:.6f}",
                  f"same top p: {100 * result['top1']:.3f}%   RMS dp: {100 * result['rms_dp']:.3f}%"]
    return "\n".join(lines)


JSON_KEYS = ("tokens", "ppl", "kld_mean", "kld_ci95", "kld_median", "kld_p99", "top1", "rms_dp")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="moecc-perplexity", description="Perplexity of a model over a text, and its "
                                "KL divergence from a reference run, scored as llama.cpp's llama-perplexity.")
    p.add_argument("--model", required=True, help="the model file (anything moecc.load opens)")
    p.add_argument("--text", required=True, help="the text to score (UTF-8)")
    p.add_argument("--ctx", type=int, default=None,
                   help=f"window length in tokens (default {DEFAULT_CTX}, or the base file's)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--save-base", metavar="BASE", help="also save this run's log-probabilities as a base file")
    which.add_argument("--base", metavar="BASE", help="compare with a base file: KL divergence, top-1, RMS dp")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all this process may use)")
    p.add_argument("--json", action="store_true", help="print one JSON object: " + ", ".join(JSON_KEYS))
    args = p.parse_args(argv)
    from .formats import FormatError
    try:
        base = Base.open(args.base) if args.base else None
        if base is not None and args.ctx is not None and args.ctx != base.ctx:
            raise PerplexityError(f"{args.base} was saved with --ctx {base.ctx}; run with --ctx {base.ctx} "
                                  "(or without --ctx)")
        ctx = base.ctx if base is not None else args.ctx or DEFAULT_CTX
        try:
            with open(args.text, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError:
            raise PerplexityError(f"{args.text} is not UTF-8 text") from None
        import moecc
        with moecc.load(args.model, threads=args.threads, ctx=ctx) as model:
            windowed = windows(model.tokenizer.encode(text), ctx)
            result = score_model(model, windowed, save_base=args.save_base, base=base,
                                 progress=not args.json or sys.stderr.isatty())
        n_windows = len(base.windows) if base is not None else len(windowed)
    except (PerplexityError, FormatError, ValueError, OSError) as e:
        print(f"moecc-perplexity: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nmoecc-perplexity: interrupted", file=sys.stderr)
        return 130
    print(json.dumps({k: result[k] for k in JSON_KEYS}) if args.json else report(result, n_windows, ctx))
    return 0


if __name__ == "__main__":
    sys.exit(main())
