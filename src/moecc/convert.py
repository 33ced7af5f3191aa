"""moecc-convert: a Hugging Face qwen3_moe checkpoint folder -> one .moecc file, in one pass.

    moecc-convert path/to/Qwen3-30B-A3B -o qwen3.moecc --quant q4

Tensors stream one at a time (experts one expert at a time, big matrices in row blocks) from
the memory-mapped shards through the storage encoder into the file, so peak memory is bounded
by a block, not by the checkpoint.  A sparse layer's experts are stacked into one tensor per
projection, whether the checkpoint keeps them per expert (`mlp.experts.E.gate_proj.weight`, as
published) or fused (`mlp.experts.gate_up_proj` [E, 2I, D], `mlp.experts.down_proj` [E, D, I]).
Norms and the router are always stored in float32.

`--quant` picks the weight matrices' storage: one type for all (f32, bf16, q8, q4, or ggml's K
types q4_k / q5_k / q6_k, written by moecc's own search, kquant.c), or one of llama.cpp's mixes
q4_k_m / q5_k_m, whose rule (which tensors get more bits) is `mix_storage`.  The K types store
rows in blocks of 256; a matrix whose rows 256 does not divide falls back to q8 (llama.cpp
takes Q5_0 / Q5_1 / Q8_0 there; moecc writes no Q5_0 / Q5_1).  `convert(importance=...)`
weights the K types' rounding error per input column (an importance matrix).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from . import __version__, imatrix, quant, storage
from .formats import moecc_file
from .formats.huggingface import Checkpoint, CheckpointError, expert_names
from .config import ConfigError, Qwen3MoeConfig, TensorSpec, tensor_specs

STORAGE_TYPES = ("f32", "bf16", "q8", "q4", "q4_k", "q5_k", "q6_k")  # what a user picks for a class of tensors
MIXES = {"q4_k_m": "q4_k", "q5_k_m": "q5_k"}  # llama.cpp's mixes: name -> the type of most matrices
ALWAYS_F32 = ("norm", "router")  # small, and precision-sensitive (routing decisions)
MATRIX_ROLES = ("embed", "attn", "experts", "mlp", "lm_head")
K_FALLBACK = "q8"  # for a matrix whose rows 256 does not divide (llama.cpp: Q5_0 / Q5_1 / Q8_0)
_BLOCK_BYTES = 64 << 20  # big 2-D tensors are converted in row blocks of about this size


def use_more_bits(layer: int, num_layers: int) -> bool:
    """llama.cpp's choice of the layers whose attn_v and ffn_down get more bits in its _M mixes
    (llama-quant.cpp): the first and last eighth of the layers and every third one between."""
    return (layer < num_layers // 8 or layer >= 7 * num_layers // 8
            or (layer - num_layers // 8) % 3 == 2)


def mix_storage(mix: str, spec: TensorSpec, cfg: Qwen3MoeConfig) -> str:
    """The storage type of one weight matrix in llama.cpp's mix `mix` (q4_k_m, q5_k_m), as
    llama_tensor_get_type picks it for a qwen3moe model: q6_k for the lm_head (the output, whose
    errors every logit sees; also for a tied embedding, which is the output), and for v_proj and
    down_proj (the experts' and a dense layer's) in use_more_bits' layers (the values attention
    averages, and the projection back into the residual stream, where llama.cpp measured 4 bits
    to cost the most); with 8 experts (llama.cpp's Mixtral case) v_proj and k_proj q8 and, in
    q4_k_m, o_proj q5_k; every other matrix the mix's base type."""
    base = MIXES[mix]
    more = spec.layer is not None and use_more_bits(spec.layer, cfg.num_hidden_layers)
    projection = spec.field
    if spec.role == "lm_head" or (spec.role == "embed" and cfg.tie_word_embeddings):
        return "q6_k"
    if spec.role == "attn" and cfg.num_experts == 8 and projection in ("v_proj", "k_proj"):
        return "q8"
    if spec.role == "attn" and cfg.num_experts == 8 and projection == "o_proj" and mix == "q4_k_m":
        return "q5_k"
    if projection in ("v_proj", "down_proj") and more:
        return "q6_k"
    return base


@dataclass(frozen=True)
class StoragePlan:
    """How each class of tensor is stored: `quant` (a storage type, or one of llama.cpp's mixes
    q4_k_m / q5_k_m) for every weight matrix, except the roles in `overrides` (e.g. {"attn":
    "bf16"}); norms and the router always in f32.  `importance` maps tensor names to per-column
    weights of the K types' rounding error: float32 [K] for a matrix, [E, K] for a stacked
    expert tensor (one row per expert); other types do not take them."""
    quant: str = "bf16"
    overrides: tuple[tuple[str, str], ...] = ()
    importance: Mapping[str, np.ndarray] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.quant not in STORAGE_TYPES + tuple(MIXES):
            raise ValueError(f"storage type {self.quant!r} is not supported; choose one of "
                             f"{', '.join(STORAGE_TYPES + tuple(MIXES))}")
        for role, name in self.overrides:
            if name not in STORAGE_TYPES:
                raise ValueError(f"storage type {name!r} is not supported; choose one of {', '.join(STORAGE_TYPES)}")
            if role not in MATRIX_ROLES:
                raise ValueError(f"unknown class of tensors {role!r}; choose from {', '.join(MATRIX_ROLES)}")

    def storage(self, spec: TensorSpec, cfg: Qwen3MoeConfig) -> str:
        """The storage type of one tensor of a model of config `cfg`; ValueError if its rows
        cannot be stored so.  q4 matrices that are only multiplied (not the embedding, which is
        looked up by row) are stored as q4p panels when their shape allows (quant.can_panel); a
        K type whose 256-value blocks do not divide a matrix's rows falls back to K_FALLBACK."""
        if spec.role in ALWAYS_F32:
            return "f32"
        name = dict(self.overrides).get(spec.role)
        if name is None:
            name = mix_storage(self.quant, spec, cfg) if self.quant in MIXES else self.quant
        if name in quant.K_TYPES and storage.get(name).shape_problem(spec.shape):
            name = K_FALLBACK
        problem = storage.get(name).shape_problem(spec.shape)
        if problem:
            raise ValueError(f"tensor {spec.name}: {problem}; store this class unquantized with "
                             f"--keep {spec.role}")
        if name == "q4" and spec.role != "embed" and quant.can_panel(spec.shape):
            return "q4p"
        return name

    def importance_of(self, spec: TensorSpec) -> np.ndarray | None:
        """spec's importance, checked: float32 [K] ([E, K] for experts), finite and >= 0."""
        weights = (self.importance or {}).get(spec.name)
        if weights is None:
            return None
        weights = np.asarray(weights)
        want = (spec.shape[0], spec.shape[-1]) if spec.role == "experts" else (spec.shape[-1],)
        if weights.shape != want or weights.dtype != np.float32:
            raise ValueError(f"importance of {spec.name}: expected float32 of shape {list(want)} (one "
                             f"weight per input column{', per expert' if len(want) == 2 else ''}), "
                             f"got {weights.dtype} {list(weights.shape)}")
        if not (np.isfinite(weights).all() and (weights >= 0).all()):
            raise ValueError(f"importance of {spec.name}: every weight must be finite and >= 0")
        return weights

    def check_importance(self, specs: list[TensorSpec]) -> None:
        """ValueError for an importance that names no tensor of `specs` or is malformed."""
        known = {s.name for s in specs}
        unknown = sorted(set(self.importance or {}) - known)
        if unknown:
            raise ValueError(f"importance names {len(unknown)} tensor(s) the model does not have, "
                             f"e.g. {unknown[0]!r}; use the .moecc tensor names (moecc-inspect lists them)")
        for spec in specs:
            self.importance_of(spec)


def _source_parts(ckpt: Checkpoint, spec: TensorSpec) -> Iterator[tuple[np.ndarray, str]]:
    """The checkpoint data of one .moecc tensor, in file order, in pieces of bounded size."""
    if spec.role == "experts":
        yield from _expert_parts(ckpt, spec)
        return
    array = ckpt.tensor(spec.name, spec.shape)
    dtype = ckpt.source_dtype(spec.name)
    # row blocks of whole q4p panels
    rows = max(quant.PANEL_ROWS, _BLOCK_BYTES // max(1, array[0].nbytes if array.ndim > 1 else array.nbytes)
               // quant.PANEL_ROWS * quant.PANEL_ROWS)
    for start in range(0, array.shape[0], rows):
        yield array[start:start + rows], dtype
    ckpt.release(spec.name)


def _expert_parts(ckpt: Checkpoint, spec: TensorSpec) -> Iterator[tuple[np.ndarray, str]]:
    prefix, projection = spec.name.rsplit(".", 1)  # "model.layers.L.mlp.experts", "gate_proj"
    num_experts, rows, cols = spec.shape
    per_expert = expert_names(spec)
    if ckpt.has(per_expert[0]):
        for name in per_expert:
            yield ckpt.tensor(name, (rows, cols)), ckpt.source_dtype(name)
            ckpt.release(name)
        return
    fused_name = prefix + (".down_proj" if projection == "down_proj" else ".gate_up_proj")
    if not ckpt.has(fused_name):
        raise CheckpointError(f"the checkpoint has neither {per_expert[0]} (per-expert "
                              f"layout) nor {fused_name} (fused layout)")
    if projection == "down_proj":
        fused, half = ckpt.tensor(fused_name, (num_experts, rows, cols)), slice(None)
    else:  # gate_up_proj holds gate in its first `rows` rows, up in the next
        fused = ckpt.tensor(fused_name, (num_experts, 2 * rows, cols))
        half = slice(0, rows) if projection == "gate_proj" else slice(rows, 2 * rows)
    for e in range(num_experts):
        yield fused[e, half], ckpt.source_dtype(fused_name)
    if projection != "gate_proj":  # gate_up_proj is read twice, for gate and then for up
        ckpt.release(fused_name)


def convert(hf_dir: str, out_path: str, plan: StoragePlan | str = "bf16", force: bool = False,
            progress: bool = True, importance: Mapping[str, np.ndarray] | None = None) -> dict:
    """Convert `hf_dir` into `out_path` (`plan`: a StoragePlan, or just the storage type of the
    weight matrices; `importance`: as StoragePlan's, replacing the plan's).  Returns statistics
    (bytes, seconds)."""
    plan = StoragePlan(plan) if isinstance(plan, str) else plan
    if importance is not None:
        plan = StoragePlan(plan.quant, plan.overrides, importance)
    ckpt = Checkpoint(hf_dir)
    out_abs = os.path.abspath(out_path)
    if os.path.isdir(out_abs):
        raise ValueError(f"output {out_path} is a folder; give a file name such as model.moecc")
    if any(os.path.exists(out_abs) and os.path.samefile(out_abs, p) for p in ckpt.input_paths()):
        raise ValueError(f"output {out_path} is one of the checkpoint's own files; choose another name")
    if os.path.exists(out_abs) and not force:
        raise FileExistsError(f"{out_path} exists; pass --force to overwrite it")

    specs = tensor_specs(ckpt.config)
    kinds = [plan.storage(s, ckpt.config) for s in specs]
    plan.check_importance(specs)
    files = ckpt.embedded_files()
    info = {"moecc": __version__, "source": os.path.basename(os.path.abspath(hf_dir)), "quant": plan.quant,
            "overrides": dict(plan.overrides), "importance": bool(plan.importance)}
    started = time.perf_counter()
    write_model(out_abs, ckpt.config.to_dict(), [(spec, kind, _encoded_parts(ckpt, spec, kind, plan.importance_of(spec)))
                                                  for spec, kind in zip(specs, kinds)], files, info, progress)
    seconds = time.perf_counter() - started
    return {"source_bytes": ckpt.source_bytes(), "output_bytes": os.path.getsize(out_abs), "seconds": seconds}


def _encoded_parts(ckpt: Checkpoint, spec: TensorSpec, kind: str,
                   importance: np.ndarray | None) -> Iterator[np.ndarray]:
    """The bytes of one tensor stored as `kind`, in pieces (read from the checkpoint lazily; an
    expert tensor's pieces are its experts, each with its row of `importance`)."""
    if kind not in quant.K_TYPES:
        importance = None
    for i, (part, source_dtype) in enumerate(_source_parts(ckpt, spec)):
        weights = None if importance is None else importance[i] if importance.ndim == 2 else importance
        yield quant.encode(part, source_dtype, kind, weights)


def write_model(path: str, config: dict, tensors: list[tuple[TensorSpec, str, Iterable[np.ndarray]]],
                files: dict[str, bytes], info: dict, progress: bool = True) -> None:
    """Write a .moecc file from `tensors`: (spec, storage type, the encoded bytes in pieces) for
    every tensor of the inventory, in file order.  The one write path of every .moecc writer
    (the converter, synthetic models); the pieces are drawn one at a time as they are written."""
    from tqdm import tqdm
    writer = moecc_file.Writer(path, config, [(spec.name, kind, spec.shape) for spec, kind, _ in tensors],
                               files, info)
    with writer, tqdm(total=writer.data_size, unit="B", unit_scale=True, disable=not progress,
                      desc=os.path.basename(path)) as bar:
        for spec, _, pieces in tensors:
            for encoded in pieces:
                writer.write(spec.name, encoded)
                bar.update(encoded.nbytes)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="moecc-convert",
        description="Convert a Hugging Face qwen3_moe checkpoint folder (config.json, *.safetensors, "
                    "tokenizer files) into one mmappable .moecc file.")
    parser.add_argument("hf_dir", help="folder of the Hugging Face checkpoint")
    parser.add_argument("-o", "--output", required=True, help="the .moecc file to write")
    parser.add_argument("--quant", default="bf16", choices=STORAGE_TYPES + tuple(MIXES),
                        help="storage type of the weight matrices: f32, bf16, q8 or q4 (blocks of 32 "
                             "values with an fp16 scale, as llama.cpp's Q8_0 / Q4_0), q4_k, q5_k, q6_k "
                             "(llama.cpp's K types, blocks of 256), or the mixes q4_k_m / q5_k_m "
                             "(llama.cpp's Q4_K_M / Q5_K_M rule); norms and the router always stay f32. "
                             "Default bf16")
    parser.add_argument("--group-size", type=int, default=None, choices=[quant.GROUP],
                        help=f"values per fp16 scale of q8 / q4: {quant.GROUP}, the only size since "
                             "format 2 (accepted so that scripts naming it keep working; the K types "
                             "have fixed blocks of 256 and take none)")
    parser.add_argument("--keep", default="", metavar="CLASSES",
                        help="comma-separated classes of tensors to keep in bf16 instead: "
                             f"{', '.join(MATRIX_ROLES)} (e.g. --keep attn,lm_head)")
    parser.add_argument("--class-quant", action="append", default=[], metavar="CLASS=TYPE",
                        help="store one class of tensors as another type, e.g. --class-quant attn=q8; repeatable")
    parser.add_argument("--imatrix", metavar="IMATRIX",
                        help="importance matrix weighting the K types' rounding error per input column: "
                             "moecc-imatrix's file, or llama-imatrix's (GGUF or legacy .dat)")
    parser.add_argument("--force", action="store_true", help="overwrite the output if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if args.group_size is not None and args.quant in quant.K_TYPES + tuple(MIXES):
            raise ValueError(f"--group-size does not apply to --quant {args.quant}: the K types have fixed "
                             f"blocks of {storage.KBLOCK} values; leave --group-size out")
        overrides = [(role, "bf16") for role in filter(None, (r.strip() for r in args.keep.split(",")))]
        for item in args.class_quant:
            role, sep, dtype = item.partition("=")
            if not sep:
                raise ValueError(f"--class-quant {item!r}: write CLASS=TYPE, e.g. attn=q8")
            overrides.append((role.strip(), dtype.strip()))
        importance = imatrix.load(args.imatrix, Checkpoint(args.hf_dir).config) if args.imatrix else None
        plan = StoragePlan(args.quant, tuple(overrides), importance)
        stats = convert(args.hf_dir, args.output, plan, force=args.force, progress=not args.quiet)
    except KeyboardInterrupt:
        print("moecc-convert: interrupted; nothing was written", file=sys.stderr)
        return 130
    except (ConfigError, CheckpointError, ValueError, FileExistsError, OSError) as e:
        print(f"moecc-convert: error: {e}", file=sys.stderr)
        return 2
    mb = stats["source_bytes"] / 1e6
    print(f"wrote {args.output}: {stats['output_bytes'] / 1e6:.1f} MB from {mb:.1f} MB in "
          f"{stats['seconds']:.1f} s ({mb / max(stats['seconds'], 1e-9):.0f} MB/s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
