"""Reading a Hugging Face checkpoint folder: config.json, safetensors shards, tokenizer files.

Tensor names are the inventory's (config.tensor_specs), but for a sparse layer's experts, which
a published checkpoint keeps one by one: `expert_names` is that one mapping.

Tensors are handed out as zero-copy views of the memory-mapped shards, so reading a 61 GB
checkpoint costs no more memory than the tensor being converted.  The safetensors container is
parsed here directly (an 8-byte header length, a JSON header, raw data) because NumPy has no
bfloat16: bf16 tensors come out as their uint16 bit patterns.
"""
from __future__ import annotations

import json
import mmap
import os
import struct

import numpy as np

from ..config import ConfigError, Qwen3MoeConfig, TensorSpec

# safetensors dtype -> numpy dtype of the view (bf16 as raw uint16 bits)
_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}
# the files a .moecc embeds verbatim, when the checkpoint has them
EMBEDDED_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json",
                  "config.json")


def expert_names(spec: TensorSpec) -> list[str]:
    """The published Hugging Face names of a stacked experts tensor's experts, one per expert:
    `model.layers.L.mlp.experts.gate_proj` [E, rows, cols] -> `model.layers.L.mlp.experts.E.gate_proj.weight`
    for E = 0, 1, ..., each of shape [rows, cols] (spec.shape[1:])."""
    prefix, projection = spec.name.rsplit(".", 1)  # "model.layers.L.mlp.experts", "gate_proj"
    return [f"{prefix}.{e}.{projection}.weight" for e in range(spec.shape[0])]


class CheckpointError(ValueError):
    """The checkpoint folder is incomplete or holds something moecc cannot convert."""


class SafetensorsFile:
    """One .safetensors file, mapped read-only."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise CheckpointError(f"{path} is too short to be a safetensors file")
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        (n,) = struct.unpack_from("<Q", self._mm, 0)
        if 8 + n > size:
            raise CheckpointError(f"{path} is truncated (header of {n} bytes, file of {size})")
        try:
            header = json.loads(bytes(self._mm[8:8 + n]))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: safetensors header is not valid JSON ({e})") from None
        header.pop("__metadata__", None)
        self._base = 8 + n
        self._size = size
        self.entries: dict[str, dict] = header

    def tensor(self, name: str) -> np.ndarray:
        meta = self.entries[name]
        dtype = _SAFETENSORS_DTYPES.get(meta["dtype"])
        if dtype is None:
            raise CheckpointError(f"tensor {name} in {self.path} has dtype {meta['dtype']}; "
                                  "moecc converts BF16, F16 and F32 checkpoints")
        begin, end = meta["data_offsets"]
        shape = tuple(meta["shape"])
        count = int(np.prod(shape, dtype=np.int64))
        if end - begin != count * np.dtype(dtype).itemsize or self._base + end > self._size:
            raise CheckpointError(f"tensor {name} in {self.path}: its byte range does not match "
                                  f"its shape {list(shape)}, or the file is truncated")
        return np.frombuffer(self._mm, dtype, count, self._base + begin).reshape(shape)

    def dtype_of(self, name: str) -> str:
        return self.entries[name]["dtype"]

    def release(self, name: str) -> None:
        """Drop the mapped pages of tensor `name` from this process (they stay in the page cache):
        without this, every page read stays resident until the file is closed, and the process
        would grow to the size of the checkpoint."""
        begin, end = self.entries[name]["data_offsets"]
        page = mmap.PAGESIZE
        start = (self._base + begin) // page * page
        stop = min(self._size, self._base + end)
        if stop > start and hasattr(mmap, "MADV_DONTNEED"):
            self._mm.madvise(mmap.MADV_DONTNEED, start, stop - start)


class Checkpoint:
    """A Hugging Face qwen3_moe checkpoint folder."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = os.fspath(folder)
        if not os.path.isdir(self.folder):
            raise CheckpointError(f"{self.folder} is not a folder; give the folder holding "
                                  "config.json and the .safetensors files")
        config_path = os.path.join(self.folder, "config.json")
        if not os.path.exists(config_path):
            raise CheckpointError(f"{self.folder} has no config.json; is it a Hugging Face checkpoint?")
        self.config = Qwen3MoeConfig.from_json_file(config_path)
        self._shards: dict[str, SafetensorsFile] = {}
        self.weight_map = self._weight_map()

    def _weight_map(self) -> dict[str, str]:
        """Tensor name -> shard file name, from the index file or from the shards' own headers."""
        index_path = os.path.join(self.folder, "model.safetensors.index.json")
        if os.path.exists(index_path):
            try:
                with open(index_path, encoding="utf-8") as f:
                    weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index_path} is malformed ({e!r})") from None
            for shard in sorted(set(weight_map.values())):
                if not os.path.exists(os.path.join(self.folder, shard)):
                    raise CheckpointError(f"shard {shard} listed in model.safetensors.index.json is "
                                          f"missing from {self.folder}; download it again")
            return dict(weight_map)
        shards = sorted(f for f in os.listdir(self.folder) if f.endswith(".safetensors"))
        if not shards:
            raise CheckpointError(f"{self.folder} has no .safetensors files")
        return {name: shard for shard in shards for name in self._shard(shard).entries}

    def _shard(self, file_name: str) -> SafetensorsFile:
        if file_name not in self._shards:
            self._shards[file_name] = SafetensorsFile(os.path.join(self.folder, file_name))
        return self._shards[file_name]

    def has(self, name: str) -> bool:
        return name in self.weight_map

    def tensor(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """A zero-copy view of tensor `name` (bf16 as uint16 bits), checked against `shape`."""
        if name not in self.weight_map:
            raise CheckpointError(f"tensor {name} is missing from the checkpoint in {self.folder}")
        shard = self._shard(self.weight_map[name])
        if name not in shard.entries:
            raise CheckpointError(f"tensor {name} is listed for {shard.path} but not in it")
        array = shard.tensor(name)
        if shape is not None and tuple(array.shape) != tuple(shape):
            raise CheckpointError(f"tensor {name} has shape {list(array.shape)}, but config.json "
                                  f"implies {list(shape)}")
        return array

    def release(self, name: str) -> None:
        """Done with tensor `name`: give back the memory its mapped pages hold."""
        self._shard(self.weight_map[name]).release(name)

    def source_dtype(self, name: str) -> str:
        return self._shard(self.weight_map[name]).dtype_of(name)

    def embedded_files(self) -> dict[str, bytes]:
        files = {}
        for name in EMBEDDED_FILES:
            path = os.path.join(self.folder, name)
            if os.path.exists(path):
                with open(path, "rb") as f:
                    files[name] = f.read()
        if "tokenizer.json" not in files:
            raise CheckpointError(f"{self.folder} has no tokenizer.json; moecc needs the "
                                  "checkpoint's tokenizer (copy it from the model's Hugging Face page)")
        return files

    def input_paths(self) -> list[str]:
        names = set(self.weight_map.values()) | set(EMBEDDED_FILES) | {"model.safetensors.index.json"}
        return [p for p in (os.path.join(self.folder, n) for n in sorted(names)) if os.path.exists(p)]

    def source_bytes(self) -> int:
        return sum(os.path.getsize(os.path.join(self.folder, s)) for s in set(self.weight_map.values()))


def save_safetensors(path: str, tensors: dict[str, tuple[str, np.ndarray]]) -> None:
    """Write a safetensors file: name -> (dtype "F32" / "F16" / "BF16", array; BF16 as uint16 bits).
    For synthetic checkpoints and tests (the safetensors package's NumPy API has no bf16)."""
    header, offset = {}, 0
    for name, (dtype, array) in tensors.items():
        if np.dtype(_SAFETENSORS_DTYPES[dtype]) != array.dtype:
            raise ValueError(f"{name}: a {dtype} tensor must be given as {_SAFETENSORS_DTYPES[dtype].__name__}")
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, array in tensors.values():
            f.write(np.ascontiguousarray(array).tobytes())
