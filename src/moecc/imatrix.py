"""moecc-imatrix: an importance matrix -- per input column of every weight matrix (per expert for
the stacked experts), the mean squared activation over a calibration text -- in llama.cpp's
imatrix file format; and `load`, which reads such a file (moecc's or llama-imatrix's) as
moecc-convert's `importance`.

    moecc-imatrix --model q8.moecc --text calibration.txt -o model.imatrix.gguf [--ctx 512] [--chunks N]

What is collected, as llama.cpp's llama-imatrix collects it (tools/imatrix/imatrix.cpp): the
text's tokens (the model's tokenizer, as moecc-perplexity encodes a text) are cut into
floor(n / ctx) windows of --ctx tokens (at most --chunks of them; a text shorter than 2 x ctx
tokens is refused, as llama-imatrix does), each run from an empty context with every
position's logits computed.  For each matrix W [N, K] and each row x [K]
that goes into it, in_sum2 += x * x per column and count += 1 (the forward step adds them in C,
_kernels Statistics; sums in double):
    q, k, v     input_layernorm(x), every row (three entries with the same values, as llama.cpp's)
    o_proj      the attention's output, every row
    router      post_attention_layernorm(x), every row: llama-imatrix collects ffn_gate_inp too
                (moecc-convert keeps the router in f32, so `load` does not return it)
    experts     gate and up: post_attention_layernorm(x) of the rows routed to expert e; down:
                silu(gate x) * (up x) of those rows (before the routing weight): per expert
    dense MLP   (mlp_only_layers) the same, as one expert of every row
    lm_head     norm(x), every row (llama-imatrix collects `output.weight` only with
                --process-output); not collected when it is tied to the embedding
Neither the embedding (its rows are looked up, not multiplied) nor the norms.

The file: GGUF (written and read with the `gguf` package), what llama-imatrix writes by default:
    general.type          "imatrix"
    imatrix.datasets      [string]: the calibration text file(s) as named on the command line
    imatrix.chunk_count   uint32: the windows run
    imatrix.chunk_size    uint32: tokens per window (--ctx)
    per matrix, by its llama.cpp tensor name NAME (formats.gguf.gguf_name: blk.0.attn_q.weight,
    blk.0.ffn_down_exps.weight, output.weight, ...), sorted by name:
    NAME.in_sum2          F32, GGUF shape [K, n] (NumPy [n, K]; [K] when n = 1): the sums of
                          squares, one row per expert of a stacked expert tensor (n = E), else n = 1
    NAME.counts           F32, GGUF shape [1, n] (NumPy [n, 1]; [1] when n = 1): the rows summed
(general.architecture "qwen3moe" is there too: the gguf writer always writes one; llama.cpp
ignores it.)  llama-quantize --imatrix reads moecc's files, and `load` reads llama-imatrix's,
including its legacy binary format (`--output-format dat`, read only): int32 n_entries; per
entry int32 name length, the name, int32 ncall, int32 nval, float32 values[nval] =
in_sum2 / count * ncall (an expert that got no rows: 1 * ncall); then, optionally, int32
chunk count, int32 length and the dataset's name.

`load` turns sums into importance: in_sum2 / count per expert (legacy: values / ncall).  An
expert the text never reached gets the count-weighted mean of its layer's other experts (the
sum of their in_sum2 over the sum of their counts), where llama-quantize gives it ones: every
expert of a layer reads the same normed hidden state, so its neighbours say far more about
which columns matter than uniform weights do.  If no expert of the layer got a row, ones.
(A legacy file cannot say which experts got no rows; they come out as ones.)
"""
from __future__ import annotations

import argparse
import os
import struct
import sys
from dataclasses import dataclass

import numpy as np

from . import perplexity
from .config import Qwen3MoeConfig, TensorSpec, tensor_specs
from .formats.gguf import gguf_name, writing

DEFAULT_CTX = 512
COLLECTED_ROLES = ("attn", "router", "experts", "mlp", "lm_head")  # the matrices an imatrix has
IMPORTANCE_ROLES = ("attn", "experts", "mlp", "lm_head")  # those moecc-convert quantizes
SUMS, COUNTS = ".in_sum2", ".counts"


class ImatrixError(ValueError):
    """An importance matrix that cannot be made or read as asked."""


@dataclass
class Entry:
    """One matrix's statistics: in_sum2 [n, K] and counts [n] (n: experts, or 1)."""
    sums: np.ndarray
    counts: np.ndarray


@dataclass
class Imatrix:
    """An imatrix file's contents: entries by llama.cpp tensor name, and its metadata."""
    entries: dict[str, Entry]
    datasets: list[str]
    chunk_count: int
    chunk_size: int  # 0 in a legacy file


# -- collection -------------------------------------------------------------------------------

def windows(tokens, ctx: int, chunks: int | None = None) -> np.ndarray:
    """int32 [n, ctx]: the windows llama-imatrix runs, llama-perplexity's (it too refuses a text
    shorter than 2 x ctx tokens), at most `chunks` of them."""
    if chunks is not None and chunks < 1:
        raise ImatrixError(f"--chunks must be at least 1, got {chunks}")
    return perplexity.windows(tokens, ctx)[:chunks]


def collect(model, windowed: np.ndarray, progress: bool = True):
    """Run `model` (a moecc Model) on each window from an empty context, every position's logits
    computed, and return the statistics its steps added up (_kernels.Statistics)."""
    from tqdm import tqdm
    from . import _kernels as K
    stats = K.Statistics(model.net.step)
    for window in tqdm(windowed, desc="windows", unit="window", disable=not progress, file=sys.stderr):
        model.logits(window, statistics=stats)
    return stats


def entries(cfg: Qwen3MoeConfig, stats) -> dict[str, Entry]:
    """Every collected matrix's Entry, by llama.cpp tensor name, from a model's Statistics."""
    out = {}
    for spec in tensor_specs(cfg):
        if spec.role not in COLLECTED_ROLES:
            continue
        layer = spec.layer
        if spec.role == "lm_head":
            sums, counts = stats.lm_head_in[None], [stats.lm_head_rows]
        elif spec.field in ("q_proj", "k_proj", "v_proj"):
            sums, counts = stats.attn_in[layer][None], [stats.rows]
        elif spec.field == "o_proj":
            sums, counts = stats.o_proj_in[layer][None], [stats.rows]
        elif spec.role == "router":
            sums, counts = stats.router_in[layer][None], [stats.rows]
        else:  # experts, or a dense MLP as one expert
            sums = stats.down_in[layer] if spec.field == "down_proj" else stats.gate_up_in[layer]
            counts = stats.expert_rows[layer]
        out[gguf_name(spec)] = Entry(np.array(sums, np.float64), np.array(counts, np.float64))
    return out


# -- the file ---------------------------------------------------------------------------------

def write(path: str, imatrix: Imatrix) -> None:
    """Write `imatrix` as a GGUF imatrix file, under a temporary name renamed at the end."""
    import gguf
    with writing(path) as writer:
        writer.add_type(gguf.GGUFType.IMATRIX)
        writer.add_array(gguf.Keys.IMatrix.DATASETS, imatrix.datasets)
        writer.add_uint32(gguf.Keys.IMatrix.CHUNK_COUNT, imatrix.chunk_count)
        writer.add_uint32(gguf.Keys.IMatrix.CHUNK_SIZE, imatrix.chunk_size)
        for name in sorted(imatrix.entries):
            e = imatrix.entries[name]
            one = len(e.counts) == 1  # llama.cpp's writer drops the outer dimension of 1
            sums = e.sums.astype(np.float32)
            counts = e.counts.astype(np.float32)
            writer.add_tensor(name + SUMS, sums.reshape(-1) if one else sums)
            writer.add_tensor(name + COUNTS, counts if one else counts.reshape(-1, 1))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()


def read(path: str) -> Imatrix:
    """The contents of an imatrix file: GGUF (moecc's or llama-imatrix's) or llama-imatrix's
    legacy .dat; ImatrixError (one line) if it is neither."""
    from .loader import is_gguf
    if not os.path.isfile(path):
        raise ImatrixError(f"{path}: no such file")
    return _read_gguf(path) if is_gguf(path) else _read_legacy(path)


def _not_imatrix(path: str, why: str) -> ImatrixError:
    return ImatrixError(f"{path} is not an importance matrix ({why}): give a file moecc-imatrix or "
                        "llama-imatrix wrote")


def _read_gguf(path: str) -> Imatrix:
    import gguf
    try:
        reader = gguf.GGUFReader(path, "r")
    except Exception as e:  # the reader raises what numpy or struct raise on bad bytes
        raise _not_imatrix(path, f"a damaged GGUF file: {(str(e).splitlines() or [type(e).__name__])[0][:120]}") \
            from None
    fields = reader.fields

    def value(key, default):
        return fields[key].contents() if key in fields else default

    kind = value(gguf.Keys.General.TYPE, None)
    if kind != gguf.GGUFType.IMATRIX:
        raise _not_imatrix(path, f"a GGUF file of general.type {kind!r}, not 'imatrix'")
    tensors = {t.name: t for t in reader.tensors}
    found = {}
    for name, t in tensors.items():
        base, suffix = (name[:-len(SUMS)], SUMS) if name.endswith(SUMS) else \
            (name[:-len(COUNTS)], COUNTS) if name.endswith(COUNTS) else (name, None)
        if suffix is None:
            continue
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            raise _not_imatrix(path, f"{name} is {t.tensor_type.name}, not F32")
        found.setdefault(base, {})[suffix] = np.array(t.data, np.float64).reshape(-1)
    result = {}
    for base, parts in found.items():
        if len(parts) != 2:
            raise _not_imatrix(path, f"{base} has {next(iter(parts))} without its "
                                     f"{COUNTS if SUMS in parts else SUMS}")
        counts = parts[COUNTS]
        if not counts.size or parts[SUMS].size % counts.size:
            raise _not_imatrix(path, f"{base} has {parts[SUMS].size} sums for {counts.size} counts")
        result[base] = Entry(parts[SUMS].reshape(counts.size, -1), np.rint(counts))
    if not result:
        raise _not_imatrix(path, "it holds no in_sum2 / counts tensors")
    return Imatrix(result, [str(d) for d in value(gguf.Keys.IMatrix.DATASETS, [])],
                   int(value(gguf.Keys.IMatrix.CHUNK_COUNT, 0)), int(value(gguf.Keys.IMatrix.CHUNK_SIZE, 0)))


def _read_legacy(path: str) -> Imatrix:
    with open(path, "rb") as f:
        data = f.read()
    at = 0

    def take(fmt: str):
        nonlocal at
        size = struct.calcsize(fmt)
        if at + size > len(data):
            raise _not_imatrix(path, "neither GGUF nor a complete legacy imatrix")
        values = struct.unpack_from(fmt, data, at)
        at += size
        return values

    (n_entries,) = take("<i")
    if n_entries < 1:
        raise _not_imatrix(path, "neither GGUF nor a legacy imatrix with entries")
    result = {}
    for _ in range(n_entries):
        (length,) = take("<i")
        if length < 1:
            raise _not_imatrix(path, "neither GGUF nor a legacy imatrix")
        name = bytes(take(f"<{length}s")[0]).decode("utf-8", "replace")
        ncall, nval = take("<ii")
        if nval < 1:
            raise _not_imatrix(path, f"legacy entry {name!r} has {nval} values")
        values = np.array(take(f"<{nval}f"), np.float64)
        # values = in_sum2 / count * ncall per expert: the means, held as sums over ncall rows
        result[name] = Entry(values[None], np.array([float(ncall)]))
    chunk_count, datasets = 0, []
    if at + 4 <= len(data):
        (chunk_count,) = take("<i")
        if at + 4 <= len(data):
            (length,) = take("<i")
            if length > 0:
                datasets.append(bytes(take(f"<{length}s")[0]).decode("utf-8", "replace"))
    return Imatrix(result, datasets, chunk_count, 0)


# -- importance -------------------------------------------------------------------------------

def _expected(cfg: Qwen3MoeConfig) -> dict[str, tuple[TensorSpec, int]]:
    """llama.cpp name -> (spec, rows n of its entry) of every matrix an imatrix of `cfg` may hold."""
    return {gguf_name(s): (s, s.shape[0] if s.role == "experts" else 1)
            for s in tensor_specs(cfg) if s.role in COLLECTED_ROLES}


def _model(cfg: Qwen3MoeConfig) -> str:
    return (f"{cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, {cfg.num_experts} experts of "
            f"{cfg.moe_intermediate_size}")


def importance(entry: Entry, n: int, K: int) -> np.ndarray:
    """float32 [n, K]: the mean squared activation per row of `entry` (see the module's rule
    for a row without counts); counts of one for n > 1 rows (a legacy file) are broadcast."""
    sums = entry.sums.reshape(-1, K)
    counts = np.broadcast_to(entry.counts, (n,)) if entry.counts.size == 1 else entry.counts
    seen = counts > 0
    out = np.ones((n, K), np.float64)
    out[seen] = sums[seen] / counts[seen, None]
    if seen.any() and not seen.all():
        out[~seen] = sums[seen].sum(axis=0) / counts[seen].sum()
    return out.astype(np.float32)


def load(path: str, config: Qwen3MoeConfig) -> dict[str, np.ndarray]:
    """moecc-convert's `importance` from the imatrix file at `path` (any format `read` reads):
    per matrix it quantizes that the file holds, by its moecc name (config.tensor_specs),
    float32 [K] (a matrix) or [E, K] (stacked experts, one row per expert).  ImatrixError (one
    line) for a file made for another model: a name or a size this model does not have."""
    imatrix = read(path)
    expected = _expected(config)
    unknown = sorted(set(imatrix.entries) - set(expected))
    if unknown:
        raise ImatrixError(f"{path} has {unknown[0]}, which this model ({_model(config)}) does not have: "
                           "the imatrix was made for another model")
    result = {}
    for name, entry in imatrix.entries.items():
        spec, n = expected[name]
        K = spec.shape[-1]
        if entry.sums.size != n * K or entry.counts.size not in (1, n):
            raise ImatrixError(f"{path}: {name} has {entry.sums.size} values in {entry.counts.size} row(s), but "
                               f"this model's has {n} row(s) of {K}: the imatrix was made for another model")
        if not (np.isfinite(entry.sums).all() and np.isfinite(entry.counts).all()):
            raise ImatrixError(f"{path}: {name} holds values that are not finite; make the imatrix again")
        if spec.role in IMPORTANCE_ROLES:
            values = importance(entry, n, K)
            result[spec.name] = values if spec.role == "experts" else values[0]
    return result


# -- the command ------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="moecc-imatrix", description="Collect an importance matrix (mean squared "
                                "activation per input column of every matrix, per expert) over a text, in "
                                "llama.cpp's imatrix format, for moecc-convert --imatrix or llama-quantize --imatrix.")
    p.add_argument("--model", required=True, help="the model file (anything moecc.load opens, e.g. a q8 .moecc or a GGUF)")
    p.add_argument("--text", required=True, help="the calibration text (UTF-8)")
    p.add_argument("-o", "--output", required=True, help="the imatrix file to write (GGUF)")
    p.add_argument("--ctx", type=int, default=DEFAULT_CTX, help=f"tokens per window (default {DEFAULT_CTX})")
    p.add_argument("--chunks", type=int, default=None, help="run at most this many windows (default: all)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all this process may use)")
    args = p.parse_args(argv)
    from .formats import FormatError
    try:
        if args.ctx < perplexity.MIN_CTX:
            raise ImatrixError(f"--ctx must be at least {perplexity.MIN_CTX}, got {args.ctx}")
        try:
            with open(args.text, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError:
            raise ImatrixError(f"{args.text} is not UTF-8 text") from None
        import moecc
        with moecc.load(args.model, threads=args.threads, ctx=args.ctx) as model:
            windowed = windows(model.tokenizer.encode(text), args.ctx, args.chunks)
            stats = collect(model, windowed)
            result = Imatrix(entries(model.config, stats), [args.text], len(windowed), args.ctx)
        write(args.output, result)
    except (ImatrixError, FormatError, ValueError, OSError) as e:
        print(f"moecc-imatrix: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nmoecc-imatrix: interrupted; nothing was written", file=sys.stderr)
        return 130
    print(f"wrote {args.output}: {len(result.entries)} matrices over {len(windowed)} windows of {args.ctx} tokens",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
