"""Storage types in NumPy: encode float32 weights into a storage type and decode them back.

This is the oracle the C kernels are tested against (the table of types is moecc.storage).
bf16 is kept as its raw uint16 bits.

q8 and q4 are ggml's Q8_0 and Q4_0, byte for byte (ggml-common.h block_q8_0 / block_q4_0; C:
moecc_block_q8 / moecc_block_q4 in moecc.h), so GGUF tensors of those types are moecc tensors
as they are.  A row of K values is K/32 blocks of 32 consecutive values, back to back; a block
is its scale and then its values:

    q8 (34 bytes):  fp16 d, int8 q[32]     w = d * q;  d = max|w| / 127, q = roundf(w / d)
    q4 (18 bytes):  fp16 d, uint8 qs[16]   byte j holds value j in its low nibble and value
                                           j + 16 in its high nibble, each as q + 8 in 0..15;
                                           w = d * q;  d = m / -8 with m the value of largest
                                           magnitude in the block (so m maps to -8 exactly),
                                           q + 8 = min(15, trunc(w / d + 8.5))

(4.5 bits per weight for q4, 8.5 for q8).  `quantize` makes the bytes ggml's reference
quantizers (ggml-quants.c quantize_row_q8_0_ref / quantize_row_q4_0_ref) make from the same
float32 values: w / d is w times the float32 reciprocal of the float32 d, roundf rounds halves
away from zero, and q4 adds 8.5 in float32 before truncating (a build of ggml that fuses that
multiply and add into one FMA can differ in a value that lands within a rounding of a step's
edge).  A stacked tensor [E, N, K] is E such matrices, one after another.

q4p is q4 laid out for the kernels in panels of PANEL_ROWS = 16 rows (N % 16 == 0):
panel p holds rows 16p .. 16p+15 as K/32 block columns of 288 bytes each; block column b is

    uint8  chunk[4][16][4]     chunk c, row r: bytes 4c .. 4c+3 of qs of row r's q4 block b
                               (values 4c..4c+3 in the low nibbles, 16+4c..16+4c+3 in the high
                               nibbles)
    fp16   d[16]               row r's scale of block b

so one 64-byte load holds four values of the same block for 16 rows, and the int8 dot products
of a block add up in 16 lanes, one per row, under one vector of scales.  The bytes per row are
q4's (a q4p tensor has the shape [..., N, row_bytes] of its q4 twin, though its "rows" are not
rows).  The converter stores as q4p every q4 matrix it can (rows a multiple of 16) that
is only multiplied, never looked up by row (so not the embedding).
"""
from __future__ import annotations

import numpy as np

from . import storage

GROUP = storage.QBLOCK  # values per fp16 scale of q8 / q4 / q4p
BLOCK_BYTES = {name: storage.TYPES[name].block_bytes for name in ("q8", "q4")}  # fp16 d, then the values
PANEL_ROWS = storage.TYPES["q4p"].panel_rows


def can_panel(shape: tuple) -> bool:
    """Whether q4 rows of a matrix (or stack) of this shape [..., N, K] can be stored as q4p."""
    return storage.TYPES["q4p"].shape_problem(tuple(shape)) is None


def to_panels(rows: np.ndarray, K: int) -> np.ndarray:
    """q4 rows uint8 [..., N, row_bytes] -> the same matrices as q4p (same shape)."""
    *lead, N, nbytes = rows.shape
    P, nb, a = N // PANEL_ROWS, K // GROUP, len(lead)
    blocks = rows.reshape(*lead, P, PANEL_ROWS, nb, BLOCK_BYTES["q4"])
    # [panel, row, block, chunk, byte] -> [panel, block, chunk, row, byte]
    qs = blocks[..., 2:].reshape(*lead, P, PANEL_ROWS, nb, 4, 4)
    qs = qs.transpose(*range(a), a, a + 2, a + 3, a + 1, a + 4).reshape(*lead, P, nb, 256)
    d = blocks[..., :2].transpose(*range(a), a, a + 2, a + 1, a + 3).reshape(*lead, P, nb, 32)
    return np.concatenate([qs, d], axis=-1).reshape(*lead, N, nbytes)


def from_panels(stored: np.ndarray, K: int) -> np.ndarray:
    """q4p uint8 [..., N, row_bytes] -> the q4 rows it holds."""
    *lead, N, nbytes = stored.shape
    P, nb, a = N // PANEL_ROWS, K // GROUP, len(lead)
    columns = stored.reshape(*lead, P, nb, 288)
    # [panel, block, chunk, row, byte] -> [panel, row, block, chunk, byte]
    qs = columns[..., :256].reshape(*lead, P, nb, 4, PANEL_ROWS, 4)
    qs = qs.transpose(*range(a), a, a + 3, a + 1, a + 2, a + 4).reshape(*lead, P, PANEL_ROWS, nb, 16)
    d = columns[..., 256:].reshape(*lead, P, nb, PANEL_ROWS, 2).transpose(*range(a), a, a + 2, a + 1, a + 3)
    return np.concatenate([d, qs], axis=-1).reshape(*lead, N, nbytes)


def _roundf(v: np.ndarray) -> np.ndarray:
    """C's roundf: to the nearest integer, halves away from zero (exact: float64 holds |v| + 0.5
    of every float32 v exactly)."""
    v = v.astype(np.float64)
    return np.copysign(np.floor(np.abs(v) + 0.5), v)


def quantize(values: np.ndarray, name: str) -> np.ndarray:
    """float32 [..., K] -> uint8 [..., row_bytes]: the rows as a q8 / q4 / q4p tensor stores them
    (q8 / q4: the bytes of ggml's reference quantizers, see the module's docstring)."""
    values = np.asarray(values, dtype=np.float32)
    *lead, K = values.shape
    problem = storage.get(name).shape_problem(values.shape)
    if problem:
        raise storage.StorageError(problem)
    if name == "q4p":
        return to_panels(quantize(values, "q4"), K)
    blocks = values.reshape(*lead, K // GROUP, GROUP)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):  # d overflows fp16 as ggml's does
        if name == "q8":
            d = np.abs(blocks).max(axis=-1) / np.float32(127)
            inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
            q = _roundf(blocks * inv[..., None]).astype(np.int8)
            packed = q.reshape(*lead, K).view(np.uint8)
        elif name == "q4":
            index = np.abs(blocks).argmax(axis=-1)[..., None]  # the first of largest magnitude
            m = np.take_along_axis(blocks, index, axis=-1)[..., 0]
            m = np.where(np.abs(m) > 0, m, np.float32(0))  # all zero: +0, so d = -0 as in ggml
            d = m / np.float32(-8)
            inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
            u = np.trunc(blocks * inv[..., None] + np.float32(8.5))  # float32 multiply, then add
            u = np.minimum(u, 15).astype(np.uint8)
            half = GROUP // 2
            packed = (u[..., :half] | (u[..., half:] << 4)).reshape(*lead, K // 2)
        else:
            raise storage.StorageError(f"{name} is not a quantized storage type")
        return assemble(name, packed, d.astype(np.float16))


def assemble(name: str, values: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """q8 / q4 rows uint8 [..., row_bytes] from their parts: `values` uint8 [..., K] (q8: the
    int8 q's bits, in the values' order) or [..., K/2] (q4: each block's 16 bytes of nibbles,
    blocks in order), and `scales` float16 [..., K/32], one per block."""
    *lead, nb = scales.shape
    d = np.ascontiguousarray(scales, dtype=np.float16).view(np.uint8).reshape(*lead, nb, 2)
    qs = values.reshape(*lead, nb, BLOCK_BYTES[name] - 2)
    return np.concatenate([d, qs], axis=-1).reshape(*lead, nb * BLOCK_BYTES[name])


def disassemble(stored: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """q8 / q4 rows uint8 [..., row_bytes] -> (scales float16 [..., K/32], values uint8
    [..., K/32, 32 or 16]): what assemble made them from, block by block."""
    *lead, nbytes = stored.shape
    blocks = stored.reshape(*lead, nbytes // BLOCK_BYTES[name], BLOCK_BYTES[name])
    return np.ascontiguousarray(blocks[..., :2]).view(np.float16)[..., 0], blocks[..., 2:]


def dequantize(stored: np.ndarray, name: str, K: int) -> np.ndarray:
    """uint8 [..., row_bytes] -> float32 [..., K]."""
    stored = np.asarray(stored).view(np.uint8)
    *lead, nbytes = stored.shape
    if nbytes != storage.get(name).row_bytes(K):
        raise storage.StorageError(f"{name} rows of {K} values take {storage.get(name).row_bytes(K)} "
                                   f"bytes, not {nbytes}")
    if name == "q4p":
        return dequantize(from_panels(stored, K), "q4", K)
    if name not in BLOCK_BYTES:
        raise storage.StorageError(f"{name} is not a quantized storage type")
    d, qs = disassemble(stored, name)
    if name == "q8":
        q = qs.view(np.int8).astype(np.float32)
    else:
        q = np.concatenate([qs & 15, qs >> 4], axis=-1).astype(np.float32) - 8
    return (q * d.astype(np.float32)[..., None]).reshape(*lead, K)


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """Exact: a bf16 value is the upper half of a float32."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(values: np.ndarray) -> np.ndarray:
    """Round to nearest even, as torch's `.to(torch.bfloat16)` does; NaN stays NaN."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


def source_to_f32(array: np.ndarray, source_dtype: str) -> np.ndarray:
    if source_dtype == "BF16":
        return bf16_to_f32(array)
    if source_dtype in ("F16", "F32"):
        return array.astype(np.float32)
    raise ValueError(f"unsupported source dtype {source_dtype}")


def encode(array: np.ndarray, source_dtype: str, name: str) -> np.ndarray:
    """Checkpoint data (as checkpoint.py views it) -> the bytes of a tensor stored as `name`."""
    if name == "bf16" and source_dtype == "BF16":
        return array  # already bf16 bits: copy as is
    values = source_to_f32(array, source_dtype)
    if name == "f32":
        return values
    if name == "bf16":
        return f32_to_bf16(values)
    if name == "f16":
        return values.astype(np.float16)
    return quantize(values, name)


def decode(stored: np.ndarray, name: str, K: int = 0) -> np.ndarray:
    """A tensor view as stored -> float32 values (K: the logical row length, for quantized types)."""
    if name == "f32":
        return np.asarray(stored, dtype=np.float32)
    if name == "bf16":
        return bf16_to_f32(stored)
    if name == "f16":
        return np.asarray(stored, dtype=np.float16).astype(np.float32)
    return dequantize(stored, name, K)


def quantize_activations(x: np.ndarray, block: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """The reference for the kernels' activation quantization: float32 [..., K] -> int8 values
    and float32 scales [..., K/block], x ~= scale * q, scale = max|x| / 127 per block."""
    x = np.asarray(x, dtype=np.float32)
    blocks = x.reshape(*x.shape[:-1], -1, block)
    scale = np.abs(blocks).max(axis=-1) / np.float32(127)
    inv = np.divide(1, scale, out=np.zeros_like(scale), where=scale > 0)
    q = np.clip(np.round(blocks * inv[..., None]), -127, 127).astype(np.int8)
    return q.reshape(x.shape), scale
