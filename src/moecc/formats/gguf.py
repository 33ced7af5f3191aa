"""Reading GGUF files (llama.cpp's format) of the `qwen3moe` architecture, and the one way
moecc writes one (`writing`: the synthetic models, importance matrices).

The container is parsed by the `gguf` package (kept by the llama.cpp project), which maps the
file read-only; this module turns what it finds into moecc's terms, checking everything first:

- the config, from the `qwen3moe.*` keys (`config_from_gguf`): llama.cpp renormalises the
  routing weights of the chosen experts for this architecture (norm_topk_prob true), the head
  width is `attention.key_length`, and a file without `output.weight` ties the lm_head to the
  embedding;
- the tensors, whose llama.cpp names map to the inventory's (`GGUF_NAMES`, by the inventory's
  field), with the GGUF shape (ggml's, innermost dimension first) reversed into the logical one
  ([..., rows, K]) and the type looked up in the storage table by its ggml type
  (`storage.BY_GGML_TYPE`): the data is handed over as zero-copy views of the mapping, since the
  bytes of every type moecc runs are ggml's own blocks;
- the tokenizer and chat template (`moecc.formats.gguf_tokenizer`), handed over as the files a
  Hugging Face checkpoint carries, so nothing past the loader knows the file was a GGUF.

GGUF stores no checksums: damage to the data itself cannot be found (`moecc-inspect --verify`
says so).
"""
from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .. import quant, storage
from ..config import ConfigError, Qwen3MoeConfig, TensorSpec, tensor_specs
from . import FormatError

ARCHITECTURE = "qwen3moe"

# llama.cpp's tensor names, by the inventory's field (config.TensorSpec.field); a layer's are
# prefixed "blk.L.", and every one ends in ".weight".  qwen3moe has no dense layers
# (config_from_gguf makes every layer sparse), so gate / up / down_proj are the stacked experts.
GGUF_NAMES = {
    "embed_tokens": "token_embd",
    "input_layernorm": "attn_norm",
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_output",
    "q_norm": "attn_q_norm",
    "k_norm": "attn_k_norm",
    "post_attention_layernorm": "ffn_norm",
    "router": "ffn_gate_inp",
    "gate_proj": "ffn_gate_exps",
    "up_proj": "ffn_up_exps",
    "down_proj": "ffn_down_exps",
    "norm": "output_norm",
    "lm_head": "output",
}
# a dense MLP's matrices (a moecc model's mlp_only_layers), as llama.cpp names them in the
# architectures that have one; they appear in moecc's importance matrices (moecc.imatrix)
GGUF_DENSE_MLP_NAMES = {"gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}


def gguf_name(spec: TensorSpec) -> str:
    """The name llama.cpp gives the inventory's tensor `spec` in a GGUF file."""
    prefix = "" if spec.layer is None else f"blk.{spec.layer}."
    names = GGUF_DENSE_MLP_NAMES if spec.role == "mlp" else GGUF_NAMES
    return f"{prefix}{names[spec.field]}.weight"


@contextmanager
def writing(path: str) -> Iterator:
    """A `gguf.GGUFWriter` on a hidden temporary name beside `path`, renamed to `path` when the
    block ends; on any error or interrupt the temporary file is removed and nothing is left."""
    import gguf
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.{os.getpid()}.partial")
    writer = gguf.GGUFWriter(tmp, ARCHITECTURE)
    try:
        yield writer
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        writer.close()
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def runnable_types() -> str:
    """The GGUF type names moecc runs, for messages."""
    import gguf
    return ", ".join(gguf.GGMLQuantizationType(t).name for t in sorted(storage.BY_GGML_TYPE))


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of the file: its llama.cpp name, ggml type, logical shape and byte span."""
    name: str
    ggml_type: int
    type_name: str  # ggml's name for it (Q4_K, BF16, ...)
    shape: tuple[int, ...]  # logical: [..., rows, K] (GGUF stores the reverse)
    offset: int  # from the start of the file
    size: int


class GGUFFile:
    """A GGUF file mapped read-only, its header parsed by the `gguf` package: metadata by key,
    tensors by llama.cpp name, and zero-copy views of their data.

    The reader describes every element of every metadata array with numpy views (for Qwen3's
    151,936 tokens and 151,387 merges, ~0.5 GB); only their values are kept, as Python objects,
    and the reader itself is dropped once read.  Those values still pin ~200 MB of the Python
    heap interleaved with them; `drop_metadata` lets it go once the tokenizer is built, so a
    loaded model holds little more than the mapping."""

    def __init__(self, path: str | os.PathLike):
        import gguf  # imported here: only a GGUF needs it
        self.path = os.fspath(path)
        try:
            self.file_size = os.path.getsize(self.path)
            reader = gguf.GGUFReader(self.path, "r")
        except OSError as e:
            raise FormatError(f"{self.path}: cannot be read ({e.strerror or e})") from None
        except Exception as e:  # the reader raises what numpy or struct raise on bad bytes
            raise FormatError(f"{self.path} is a damaged or truncated GGUF file (the gguf reader: "
                              f"{_one_line(e)}); download it again") from None
        self._data = reader.data  # numpy.memmap of the whole file, read-only
        # metadata and tensor table: what ranks compare to know they run the same file
        self.header_digest = hashlib.sha256(self._data[:reader.data_offset]).hexdigest()
        try:
            self._metadata = {key: _contents(field) for key, field in reader.fields.items()}
            self.tensors = {t.name: self._tensor(t) for t in reader.tensors}
        except BaseException:
            self.close()
            raise

    def _tensor(self, t) -> GGUFTensor:
        shape = tuple(reversed([int(d) for d in t.shape]))
        if not shape or any(d <= 0 for d in shape):
            raise FormatError(f"{self.path}: tensor {t.name} has invalid shape {list(shape)}; the file is damaged")
        offset, size = int(t.data_offset), int(t.n_bytes)
        if offset < 0 or offset + size > self.file_size:
            raise FormatError(f"{self.path}: tensor {t.name} (offset {offset}, {size} bytes) lies past the "
                              f"end of the file ({self.file_size} bytes); the file is truncated, download it again")
        return GGUFTensor(t.name, int(t.tensor_type), t.tensor_type.name, shape, offset, size)

    def value(self, key: str, kind: type, default=None):
        """The metadata value at `key` as `kind` (int, float, bool, str, or list for arrays);
        `default` if absent; FormatError if present with another type."""
        if key not in self._metadata:
            return default
        value = self._metadata[key]
        if isinstance(value, _Unreadable):
            raise FormatError(f"{self.path}: metadata {key} is unreadable ({value.reason}); the file is damaged")
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return int(value)
        if isinstance(value, kind):
            return value
        raise FormatError(f"{self.path}: metadata {key} is {value!r:.60}, not a {kind.__name__}; the file is damaged")

    def keys(self) -> list[str]:
        return list(self._metadata)

    def drop_metadata(self) -> None:
        """Forget the metadata (everything moecc needs of it has been read)."""
        self._metadata = {}

    def view(self, name: str, st: storage.StorageType) -> np.ndarray:
        """A read-only view of tensor `name` as the kernels take it in storage type `st`."""
        t = self.tensors[name]
        return self._data[t.offset:t.offset + t.size].view(st.view_dtype).reshape(st.view_shape(t.shape))

    def advise_unread(self, name: str, start: int, end: int) -> None:
        """Say that this process never reads bytes [start, end) of tensor `name` (as
        moecc_file.ModelFile.advise_unread: the whole pages inside become a region of their own,
        MADV_RANDOM, so that reads of their neighbours never map them)."""
        mm = getattr(self._data, "_mmap", None)  # numpy.memmap's mapping, from the file's start
        if mm is None or not hasattr(mmap, "MADV_RANDOM"):
            return
        offset = self.tensors[name].offset
        first = (offset + start + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
        last = (offset + end) // mmap.PAGESIZE * mmap.PAGESIZE
        if last > first:
            mm.madvise(mmap.MADV_RANDOM, first, last - first)

    def close(self) -> None:
        """Unmap the file.  Views handed out before must no longer be used."""
        mm = getattr(getattr(self, "_data", None), "_mmap", None)  # numpy.memmap's mapping
        if mm is not None:
            try:
                mm.close()
            except BufferError:  # views still exported: the mapping goes when the last one does
                pass


@dataclass(frozen=True)
class _Unreadable:
    reason: str


def _contents(field):
    """A metadata field's value as Python objects (an _Unreadable saying why, if damaged)."""
    try:
        return field.contents()
    except Exception as e:
        return _Unreadable(_one_line(e))


def _one_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:200]


def config_from_gguf(f: GGUFFile) -> Qwen3MoeConfig:
    """The model config from the file's `qwen3moe.*` keys, checked as a config.json is."""
    parts = f.value("split.count", int, 1)
    if parts > 1:
        raise FormatError(f"{f.path} is part {f.value('split.no', int, 0) + 1} of a GGUF split in {parts} files; "
                          "moecc reads one file: join them with llama.cpp's `llama-gguf-split --merge FIRST OUT`")
    arch = f.value("general.architecture", str)
    if arch != ARCHITECTURE:
        raise FormatError(f"{f.path}: general.architecture is {arch!r}; moecc runs {ARCHITECTURE} "
                          "(Qwen3-30B-A3B, Qwen3-Coder-30B-A3B, Qwen3-235B-A22B, ...)")

    def need(key: str, kind: type = int):
        value = f.value(f"{ARCHITECTURE}.{key}", kind)
        if value is None:
            raise FormatError(f"{f.path} has no {ARCHITECTURE}.{key}; the file is incomplete")
        return value

    def get(key: str, kind: type, default=None):
        return f.value(f"{ARCHITECTURE}.{key}", kind, default)

    heads = need("attention.head_count")
    hidden = need("embedding_length")
    head_dim = get("attention.key_length", int, hidden // max(heads, 1))
    if get("attention.value_length", int, head_dim) != head_dim:
        raise FormatError(f"{f.path}: attention.value_length differs from key_length; Qwen3-MoE's are equal")
    tokens = f.value("tokenizer.ggml.tokens", list, [])
    eos = f.value("tokenizer.ggml.eos_token_id", int)
    raw = {
        "vocab_size": get("vocab_size", int, len(tokens)),
        "hidden_size": hidden,
        "intermediate_size": get("feed_forward_length", int, 0),
        "moe_intermediate_size": need("expert_feed_forward_length"),
        "num_hidden_layers": need("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": get("attention.head_count_kv", int, heads),
        "head_dim": head_dim,
        "num_experts": need("expert_count"),
        "num_experts_per_tok": need("expert_used_count"),
        "norm_topk_prob": True,  # llama.cpp's qwen3moe graph always renormalises the top-k weights
        "rms_norm_eps": need("attention.layer_norm_rms_epsilon", float),
        "rope_theta": get("rope.freq_base", float, 10000.0),  # llama.cpp's default
        "max_position_embeddings": get("context_length", int, 40960),
        "tie_word_embeddings": "output.weight" not in f.tensors,
        "bos_token_id": f.value("tokenizer.ggml.bos_token_id", int),
        "eos_token_id": eos,
    }
    scaling = get("rope.scaling.type", str, "none")
    if scaling != "none":  # refused by the config check, with its message
        raw["rope_scaling"] = {"rope_type": scaling}
    try:
        return Qwen3MoeConfig.from_dict(raw)
    except ConfigError as e:
        raise FormatError(f"{f.path}: its {ARCHITECTURE} metadata describes a model moecc cannot run: {e}") from None


class InventoryTensor(NamedTuple):
    """A tensor of the inventory as the file holds it."""
    name: str  # the inventory's (config.tensor_specs)
    gguf_name: str  # llama.cpp's
    data: np.ndarray  # the kernels' view (storage.StorageType.view_shape)
    storage: str  # a name in storage.TYPES
    shape: tuple[int, ...]  # logical


def read_weights(f: GGUFFile, cfg: Qwen3MoeConfig) -> list[InventoryTensor]:
    """Every tensor of the inventory, in its order.  Each one's shape and type are checked here
    against the config; the caller checks the layout as a whole (loader.check_weights)."""
    specs = tensor_specs(cfg)
    by_gguf_name = {gguf_name(s): s for s in specs}
    extra = sorted(set(f.tensors) - set(by_gguf_name))
    if extra:
        raise FormatError(f"{f.path}: tensor {extra[0]} is not part of a {ARCHITECTURE} model as its "
                          "metadata describes it; moecc cannot run this file")
    weights = []
    for name, spec in by_gguf_name.items():
        t = f.tensors.get(name)
        if t is None:
            raise FormatError(f"{f.path}: tensor {name} is missing; the file is incomplete or not a "
                              f"{ARCHITECTURE} model")
        if t.shape != spec.shape:
            raise FormatError(f"{f.path}: tensor {name} has shape {list(t.shape)} but the metadata "
                              f"implies {list(spec.shape)}; the file is damaged")
        st = storage.BY_GGML_TYPE.get(t.ggml_type)
        if st is None:
            raise FormatError(f"{f.path}: tensor {name} is {t.type_name}, a type moecc does not run; "
                              f"moecc runs {runnable_types()} (use a file of one of those)")
        problem = st.shape_problem(t.shape)
        expected = None if problem else st.tensor_bytes(t.shape)
        if problem or expected != t.size:
            raise FormatError(f"{f.path}: tensor {name} ({t.type_name} {list(t.shape)}) does not fit its "
                              f"{t.size} bytes{'; ' + problem if problem else ''}; the file is damaged")
        data = f.view(name, st)
        if spec.role in ("norm", "router") and st.name != "f32":
            # the kernels read norms and the router as float32; a file may store them as f16 or
            # bf16: these few small tensors are converted once, here (the only copy made at load)
            if st.name not in ("f16", "bf16"):
                raise FormatError(f"{f.path}: tensor {name} is {t.type_name}; moecc needs norms and the "
                                  "router in F32, F16 or BF16")
            data = quant.source_to_f32(data, st.name.upper())
            st = storage.get("f32")
        weights.append(InventoryTensor(spec.name, name, data, st.name, t.shape))
    return weights
