"""A quantized .moecc file of Qwen3-30B-A3B's geometry straight from random bits, no checkpoint.

    python -m moecc.synthetic --quant q4 --layers 48 --out syn48-q4.moecc    (moecc-bench --synthetic)

writes the q4 / q8 file moecc-convert would make from a synthetic checkpoint (moecc.synthetic.
checkpoint), so the full 48-layer model (17 GB at q4) needs no 61 GB bf16 source.  It goes
through convert.write_model, the converter's one write path, with the converter's storage plan:
same config, tensor table and embedded files.
"""
from __future__ import annotations

import os
import zlib
from collections.abc import Iterator

import numpy as np

from .. import __version__, storage
from ..config import Qwen3MoeConfig, TensorSpec, tensor_specs
from ..convert import StoragePlan, write_model
from ..formats.huggingface import EMBEDDED_FILES
from ..quant import GROUP, PANEL_ROWS, assemble, bf16_to_f32, to_panels
from . import SYNTHETIC_MODEL, synthetic_files
from .checkpoint import WEIGHT_STD, draw_bf16, normal_bf16_table

QUANTIZED = ("q8", "q4")  # what write_quantized_model writes
_BLOCK_BYTES = 16 << 20  # quantized tensors are generated and written in row blocks of about this size


def _quant_levels(dtype: str) -> np.ndarray:
    """The values a uniformly random stored byte (q8) or nibble (q4) decodes to, before the scale."""
    if dtype == "q4":
        return np.arange(16) - 8
    return np.maximum(np.arange(256, dtype=np.uint8).view(np.int8), -127)  # q8 never stores -128


def quantized_scale(dtype: str, std: float = WEIGHT_STD) -> float:
    """The group scale at which uniformly random quantized values have standard deviation `std`
    (the scale's sign is random too, so the weights average to zero)."""
    return std / float(np.sqrt(np.mean(np.square(_quant_levels(dtype), dtype=np.float64))))


def _random_rows(name: str, rows: int, K: int, scale: np.uint16, rng: np.random.Generator) -> np.ndarray:
    """uint8 [rows, row_bytes]: uniformly random q4 nibbles / q8 values, and fp16 block scales of
    magnitude `scale` (fp16 bits) with random signs -- all cut from one draw of raw bits (SFC64's
    raw output is ~4 GB/s, several times faster than rng.bytes)."""
    value_bytes = K if name == "q8" else K // 2
    width = value_bytes + 2 * (K // GROUP)
    raw = rng.bit_generator.random_raw(-(-rows * width // 8)).view(np.uint8)[:rows * width].reshape(rows, width)
    values, scales = raw[:, :value_bytes], raw[:, value_bytes:].view(np.uint16)
    if name == "q8":
        np.maximum(values.view(np.int8), -127, out=values.view(np.int8))
    scales &= np.uint16(0x8000)
    scales |= scale
    return assemble(name, values, scales.view(np.float16))


def _quantized_model_parts(spec: TensorSpec, name: str, seed: int, scale: np.uint16,
                           normal: np.ndarray) -> Iterator[np.ndarray]:
    """The bytes of one tensor of write_quantized_model's file, in file order, in bounded blocks."""
    count = int(np.prod(spec.shape))
    if spec.role == "norm":
        yield np.ones(count, np.float32)
    elif name == "f32":  # the router
        yield bf16_to_f32(draw_bf16(normal, seed, spec.name, 0, count))
    else:
        K = spec.shape[-1]
        rows = count // K
        # blocks of whole q4p panels; a q4p block is q4 rows laid out as panels
        step = max(PANEL_ROWS, _BLOCK_BYTES // storage.get(name).row_bytes(K) // PANEL_ROWS * PANEL_ROWS)
        for index, start in enumerate(range(0, rows, step)):
            rng = np.random.Generator(np.random.SFC64([seed, zlib.crc32(spec.name.encode()), index]))
            if name == "q4p":
                yield to_panels(_random_rows("q4", min(step, rows - start), K, scale, rng), K)
            else:
                yield _random_rows(name, min(step, rows - start), K, scale, rng)


def write_quantized_model(path: str, layers: int, quant: str = "q4", seed: int = 0,
                          vocab_size: int | None = None, progress: bool = True, **overrides) -> dict:
    """Write a .moecc file of Qwen3-30B-A3B's geometry with `layers` layers straight from random
    quantized data: the file moecc-convert would write from a synthetic checkpoint with
    `--quant quant` (same config, tensor table, embedded files), without the bf16 checkpoint
    (61 GB at 48 layers), through the converter's own write path.  Quantized values are
    uniformly random, block scales are +-quantized_scale(quant) so the weights have the
    checkpoint's std of 0.02; norms are 1.0; the router is f32 as the converter stores it, drawn
    as the checkpoint's bf16 weights are.  Tensors stream to the file in row blocks, so memory
    stays at one block.  `overrides` replace config keys (a tiny geometry for tests).  Returns
    {"bytes": file size, "config": config dict}."""
    if quant not in QUANTIZED:
        raise ValueError(f"quant must be one of {', '.join(QUANTIZED)}, not {quant!r}")
    raw_cfg, files = synthetic_files(layers, vocab_size, **overrides)
    cfg = Qwen3MoeConfig.from_dict(raw_cfg)
    plan = StoragePlan(quant)
    info = {"moecc": __version__, "source": SYNTHETIC_MODEL, "quant": quant,
            "overrides": {}, "synthetic": {"model": SYNTHETIC_MODEL, "layers": layers, "seed": seed}}
    embedded = {name: files[name] for name in EMBEDDED_FILES if name in files}  # as the converter embeds
    scale = np.array(quantized_scale(quant), np.float16).view(np.uint16)
    normal = normal_bf16_table()
    tensors = [(spec, plan.storage(spec, cfg), _quantized_model_parts(spec, plan.storage(spec, cfg), seed, scale, normal))
               for spec in tensor_specs(cfg)]
    write_model(path, cfg.to_dict(), tensors, embedded, info, progress)
    return {"bytes": os.path.getsize(path), "config": raw_cfg}
