"""A synthetic Hugging Face checkpoint folder with the geometry of Qwen3-30B-A3B.

    python -m moecc.synthetic --layers 8 --out /work/scratch/syn8

writes what a download of Qwen/Qwen3-30B-A3B holds, with random weights and fewer layers:
config.json, generation_config.json, model-0000K-of-0000N.safetensors shards (about 4 GB each)
with model.safetensors.index.json, and the tokenizer files (moecc.synthetic.tokenizer).  Both
moecc-convert and llama.cpp's convert_hf_to_gguf.py read it, so the two engines can be timed on
the same weights.

The tensors are the inventory's (config.tensor_specs), under the published names: a stacked
experts tensor as its experts one by one (formats.huggingface.expert_names).  Weights are bf16
draws of N(0, 0.02²) (norms are 1.0).  A draw is a lookup of a random uint16 in a table of the
65,536 quantile midpoints of that normal, rounded to bf16: exactly normal to bf16 resolution
(tails cut at 4.3 sigma), and several times faster than drawing floats and rounding them.
Tensors stream to disk in chunks from two worker threads, so memory stays at a few chunks
whatever the checkpoint's size; each chunk has its own seed, so the output does not depend on
the thread count.
"""
from __future__ import annotations

import json
import os
import statistics
import struct
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..config import Qwen3MoeConfig, tensor_specs
from ..formats.huggingface import expert_names
from . import synthetic_files

WEIGHT_STD = 0.02
DEFAULT_SHARD_BYTES = 4 << 30
_CHUNK_ELEMENTS = 8 << 20  # 16 MB of bf16 per generated chunk
_BF16_ONE = 0x3F80


@dataclass(frozen=True)
class SyntheticTensor:
    name: str  # Hugging Face key
    shape: tuple[int, ...]
    fill: str  # "normal" (N(0, 0.02^2)) or "ones"

    @property
    def nbytes(self) -> int:
        return 2 * int(np.prod(self.shape, dtype=np.int64))


def hf_tensors(cfg: dict) -> list[SyntheticTensor]:
    """The tensors of a qwen3_moe checkpoint of config.json `cfg`, in the inventory's order,
    with the published names (experts one by one); norms are ones, the rest normal."""
    out = []
    for spec in tensor_specs(Qwen3MoeConfig.from_dict(cfg)):
        fill = "ones" if spec.role == "norm" else "normal"
        if spec.role == "experts":
            out += [SyntheticTensor(name, spec.shape[1:], fill) for name in expert_names(spec)]
        else:
            out.append(SyntheticTensor(spec.name, spec.shape, fill))
    return out


def normal_bf16_table(std: float = WEIGHT_STD) -> np.ndarray:
    """uint16 [65536]: bf16 bits of the 65,536 quantile midpoints of N(0, std^2); a uniform
    random uint16 indexes it to draw one weight."""
    inv = statistics.NormalDist(0.0, std).inv_cdf
    values = np.array([inv((i + 0.5) / 65536) for i in range(65536)], np.float32)
    bits = values.view(np.uint32)
    return ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)


def draw_bf16(table: np.ndarray, seed: int, name: str, index: int, count: int) -> np.ndarray:
    """uint16 [count]: chunk `index` of tensor `name`'s bf16 weights, drawn through `table`
    (normal_bf16_table) from a generator seeded by (seed, name, index) alone."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode()), index])
    return table[np.frombuffer(rng.bytes(2 * count), np.uint16)]


def _shards(tensors: list[SyntheticTensor], shard_bytes: int) -> list[list[SyntheticTensor]]:
    shards: list[list[SyntheticTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def _header(tensors: list[SyntheticTensor]) -> bytes:
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for t in tensors:
        header[t.name] = {"dtype": "BF16", "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    return blob + b" " * (-len(blob) % 8)


def _chunks(tensors: list[SyntheticTensor], seed: int, table: np.ndarray,
            pool: ThreadPoolExecutor) -> Iterator[np.ndarray]:
    """The bytes of `tensors` in order, generated a few chunks ahead on the pool."""
    ones = np.full(_CHUNK_ELEMENTS, _BF16_ONE, np.uint16)
    jobs = []
    for t in tensors:
        n = t.nbytes // 2
        for i, start in enumerate(range(0, n, _CHUNK_ELEMENTS)):
            count = min(_CHUNK_ELEMENTS, n - start)
            jobs.append((t, i, count))
    pending: list = []
    for t, i, count in jobs:
        if t.fill == "ones":
            pending.append(ones[:count])
        else:
            pending.append(pool.submit(draw_bf16, table, seed, t.name, i, count))
        while len(pending) > 6:
            head = pending.pop(0)
            yield head if isinstance(head, np.ndarray) else head.result()
    for head in pending:
        yield head if isinstance(head, np.ndarray) else head.result()


def make_checkpoint(out_dir: str, layers: int = 8, vocab_size: int | None = None, seed: int = 0,
                    shard_bytes: int = DEFAULT_SHARD_BYTES, threads: int = 2, progress: bool = True,
                    **overrides) -> dict:
    """Write a synthetic Qwen3-30B-A3B-shaped checkpoint with `layers` layers into `out_dir`.
    `overrides` replace config.json keys (e.g. hidden_size=64 for a tiny test model).
    Returns {"bytes": weight bytes written, "shards": count, "config": the config dict}."""
    cfg, files = synthetic_files(layers, vocab_size, **overrides)
    os.makedirs(out_dir, exist_ok=True)
    for name, blob in files.items():
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(blob)

    tensors = hf_tensors(cfg)
    shards = _shards(tensors, shard_bytes)
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for f in os.listdir(out_dir):  # shards of an earlier, differently split checkpoint
        if f.endswith(".safetensors") and f not in names:
            os.remove(os.path.join(out_dir, f))
    table = normal_bf16_table()
    total = sum(t.nbytes for t in tensors)
    done = 0
    from tqdm import tqdm
    with ThreadPoolExecutor(max(1, threads)) as pool, \
            tqdm(total=total, unit="B", unit_scale=True, disable=not progress, desc=os.path.basename(out_dir)) as bar:
        for shard_name, shard in zip(names, shards):
            path = os.path.join(out_dir, shard_name)
            header = _header(shard)
            with open(path + ".partial", "wb") as f:
                f.write(struct.pack("<Q", len(header)))
                f.write(header)
                for chunk in _chunks(shard, seed, table, pool):
                    f.write(memoryview(chunk).cast("B"))
                    bar.update(chunk.nbytes)
                    done += chunk.nbytes
            os.replace(path + ".partial", path)
    index = {"metadata": {"total_size": total},
             "weight_map": {t.name: n for n, shard in zip(names, shards) for t in shard}}
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2)
        f.write("\n")
    return {"bytes": done, "shards": len(shards), "config": cfg}
