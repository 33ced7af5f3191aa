"""Loading: a model file -> its config, its tokenizer and generation files, and its weights.

    source = loader.open_model("qwen3.moecc")
    source.config                      # Qwen3MoeConfig
    source.files["tokenizer.json"]     # bytes; also tokenizer_config.json, generation_config.json, ...
    source.weights["model.norm.weight"]  # model.Weight: a zero-copy view of the mapped file
    source.close()

Each file kind has a reader in `moecc.formats` (`moecc_file`; `gguf` for llama.cpp's files,
whose tokenizer `gguf_tokenizer` hands over as the files a checkpoint carries), told apart here
by the file's first bytes; each hands over the same ModelSource, whose weights are checked here,
once, against the config's tensor inventory (`config.tensor_specs`) before anything runs.  What
the engine does with them is `moecc.engine`'s business.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from . import storage
from .config import ConfigError, Qwen3MoeConfig, tensor_specs
from .formats import FormatError, gguf, gguf_tokenizer, moecc_file
from .model import Weight

GGUF_MAGIC = b"GGUF"


@dataclass
class ModelSource:
    """What a model file holds, validated: config, embedded files, weights (views of the mapping)."""
    path: str
    config: Qwen3MoeConfig
    weights: dict[str, Weight]  # every tensor of tensor_specs(config), by name
    files: dict[str, bytes]  # the tokenizer and generation files the file carries
    digest: str  # of the file's header (config, tensor table with CRC-32s): ranks compare it
    _close: Callable[[], None] = field(repr=False, default=lambda: None)
    _advise_unread: Callable[[str, int, int], None] = field(repr=False, default=lambda name, start, end: None)

    @property
    def mapped_bytes(self) -> int:
        """Bytes of weights mapped (file-backed: resident only as the kernels read them)."""
        return sum(w.data.nbytes for w in self.weights.values())

    def read_views(self, experts: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
        """The weights a process reads: all of them, or with `experts` (begin, end) only those
        experts of each sparse layer's stacked expert tensors (one byte range of each) and the
        rest whole."""
        for spec in tensor_specs(self.config):
            data = self.weights[spec.name].data
            yield data[experts[0]:experts[1]] if experts and spec.role == "experts" else data

    def read_bytes(self, experts: tuple[int, int] | None = None) -> int:
        """Bytes of read_views(experts): what becomes resident as the kernels run."""
        return sum(view.nbytes for view in self.read_views(experts))

    def keep_to(self, experts: tuple[int, int]) -> None:
        """Tell the kernel that this process reads only experts [begin, end) of each sparse layer
        (read_views): the other experts' pages are never mapped into it, not even those the
        kernel would map along with a neighbouring page it faults in (the pages the other ranks
        of the same machine read are in its page cache)."""
        for spec in tensor_specs(self.config):
            if spec.role == "experts":
                data = self.weights[spec.name].data
                per_expert = data[0].nbytes
                self._advise_unread(spec.name, 0, experts[0] * per_expert)
                self._advise_unread(spec.name, experts[1] * per_expert, data.nbytes)

    def touch(self, experts: tuple[int, int] | None = None) -> None:
        """Read a byte of every page of the weights this process reads (read_views), so that they
        are in memory (benchmarks do this before timing, as llama-bench's warm-up run does)."""
        for view in self.read_views(experts):
            view.reshape(-1).view(np.uint8)[::4096].sum()

    def close(self) -> None:
        self._close()


def open_model(path: str | os.PathLike) -> ModelSource:
    """Map the model file at `path` and validate it; FormatError (one line saying what is wrong
    and what to do) for anything moecc cannot run."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(8)
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise FormatError(f"{path} is a folder; give the path of a .moecc or .gguf file "
                          "(moecc-convert makes one from a Hugging Face folder)") from None
    if magic.startswith(GGUF_MAGIC):
        return _open_gguf(path)
    return _open_moecc(path)


def is_gguf(path: str | os.PathLike) -> bool:
    """Whether the file at `path` begins with GGUF's magic (False if it cannot be read: open_model
    says why)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(GGUF_MAGIC)) == GGUF_MAGIC
    except OSError:
        return False


def _open_moecc(path: str) -> ModelSource:
    mf = moecc_file.ModelFile(path)
    try:
        config = _config(path, mf.config_dict)
        layout = {name: (e.dtype, e.shape) for name, e in mf.tensors.items()}
        check_weights(path, config, layout)
        weights = {name: Weight(mf.tensor(name), e.dtype) for name, e in mf.tensors.items()}
        files = {name: mf.file_bytes(name) for name in mf.files}
    except BaseException:
        mf.close()
        raise
    return ModelSource(path, config, weights, files, hashlib.sha256(mf.header_bytes).hexdigest(), mf.close,
                       mf.advise_unread)


def _open_gguf(path: str) -> ModelSource:
    f = gguf.GGUFFile(path)
    try:
        config = gguf.config_from_gguf(f)
        tensors = gguf.read_weights(f, config)
        check_weights(path, config, {t.name: (t.storage, t.shape) for t in tensors})
        files = gguf_tokenizer.tokenizer_files(f)
        f.drop_metadata()
    except BaseException:
        f.close()
        raise
    gguf_names = {t.name: t.gguf_name for t in tensors}
    return ModelSource(path, config, {t.name: Weight(t.data, t.storage) for t in tensors}, files, f.header_digest,
                       f.close, lambda name, start, end: f.advise_unread(gguf_names[name], start, end))


def _config(path: str, raw: dict) -> Qwen3MoeConfig:
    try:
        return Qwen3MoeConfig.from_dict(raw)
    except (ConfigError, TypeError, ValueError) as e:
        raise FormatError(f"{path}: its config is invalid: {e}") from None


def check_weights(path: str, cfg: Qwen3MoeConfig, layout: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    """The file's tensors ({name: (storage type, logical shape)}) must be exactly the ones the
    config implies, in shape, in a storage type moecc runs them in."""
    specs = tensor_specs(cfg)
    for spec in specs:
        if spec.name not in layout:
            raise FormatError(f"{path}: tensor {spec.name} is missing; the file does not match its "
                              "config (re-convert it)")
        kind, shape = layout[spec.name]
        if tuple(shape) != spec.shape:
            raise FormatError(f"{path}: tensor {spec.name} has shape {list(shape)} but the config "
                              f"implies {list(spec.shape)}; re-convert the model")
        if spec.role in ("norm", "router") and kind != "f32":
            raise FormatError(f"{path}: tensor {spec.name} is {kind}; norms and the router must be f32")
        if spec.role == "embed" and not storage.get(kind).row_lookup:
            raise FormatError(f"{path}: {spec.name} is stored as {kind}, whose rows cannot be looked "
                              "up one by one; re-convert the model")
    extra = sorted(set(layout) - {s.name for s in specs})
    if extra:
        raise FormatError(f"{path}: tensor {extra[0]} is not part of the model its config describes; "
                          "the file is damaged or from another moecc")
    # the SwiGLU kernel reads a layer's gate and up rows with one tile
    names = {(s.layer, s.field): s.name for s in specs}
    for layer in range(cfg.num_hidden_layers):
        gate, up = names[layer, "gate_proj"], names[layer, "up_proj"]
        if layout[gate][0] != layout[up][0]:
            raise FormatError(f"{path}: {gate} is {layout[gate][0]} but {up} is {layout[up][0]}; "
                              "gate and up must share a storage type (re-convert it)")
