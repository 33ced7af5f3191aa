"""Storage types in NumPy: encode float32 weights into a storage type and decode them back.

This is the oracle the C kernels are tested against (the table of types is moecc.storage).
bf16 is kept as its raw uint16 bits.

q8 and q4 store a weight matrix [N, K] row by row; each row of K values is cut into K/32 blocks
of 32 consecutive values, and holds, in this order:

    q8:  int8   q[K]           q = round(w / d), d = max|w| / 127 over the block
         fp16   d[K/32]        one scale per block
    q4:  uint8  packed[K/2]    block b occupies bytes 16b .. 16b+15; byte j of a block holds
                               value j in its low nibble and value j + 16 in its high nibble,
                               each as q + 8 in 0..15
         fp16   d[K/32]        q = clamp(round(w / d), -8, 7), d = m / -8 where m is the value
                               of largest magnitude in the block (so m itself maps to -8 exactly)

so w ~= d * q (4.5 bits per weight for q4, 8.5 for q8).  A stacked tensor [E, N, K] is E such
matrices, one after another.

q4p is q4 laid out for the kernels in panels of PANEL_ROWS = 16 rows (N % 16 == 0):
panel p holds rows 16p .. 16p+15 as K/32 block columns of 288 bytes each; block column b is

    uint8  chunk[4][16][4]     chunk c, row r: bytes 16b+4c .. 16b+4c+3 of row r's q4 packed
                               values (values 4c..4c+3 of block b in the low nibbles,
                               16+4c..16+4c+3 in the high nibbles)
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
PANEL_ROWS = storage.TYPES["q4p"].panel_rows


def can_panel(shape: tuple) -> bool:
    """Whether q4 rows of a matrix (or stack) of this shape [..., N, K] can be stored as q4p."""
    return storage.TYPES["q4p"].shape_problem(tuple(shape)) is None


def to_panels(rows: np.ndarray, K: int) -> np.ndarray:
    """q4 rows uint8 [..., N, row_bytes] -> the same matrices as q4p (same shape)."""
    *lead, N, nbytes = rows.shape
    nb = K // GROUP
    packed = rows[..., :K // 2].reshape(*lead, N // PANEL_ROWS, PANEL_ROWS, nb, 4, 4)
    scales = rows[..., K // 2:].reshape(*lead, N // PANEL_ROWS, PANEL_ROWS, nb, 2)
    a = len(lead)  # [panel, row, block, chunk, byte] -> [panel, block, chunk, row, byte]
    packed = packed.transpose(*range(a), a, a + 2, a + 3, a + 1, a + 4).reshape(*lead, N // PANEL_ROWS, nb, 256)
    scales = scales.transpose(*range(a), a, a + 2, a + 1, a + 3).reshape(*lead, N // PANEL_ROWS, nb, 32)
    return np.concatenate([packed, scales], axis=-1).reshape(*lead, N, nbytes)


def from_panels(stored: np.ndarray, K: int) -> np.ndarray:
    """q4p uint8 [..., N, row_bytes] -> the q4 rows it holds."""
    *lead, N, nbytes = stored.shape
    nb = K // GROUP
    blocks = stored.reshape(*lead, N // PANEL_ROWS, nb, 288)
    a = len(lead)
    packed = blocks[..., :256].reshape(*lead, N // PANEL_ROWS, nb, 4, PANEL_ROWS, 4)
    packed = packed.transpose(*range(a), a, a + 3, a + 1, a + 2, a + 4).reshape(*lead, N, K // 2)
    scales = blocks[..., 256:].reshape(*lead, N // PANEL_ROWS, nb, PANEL_ROWS, 2)
    scales = scales.transpose(*range(a), a, a + 2, a + 1, a + 3).reshape(*lead, N, 2 * nb)
    return np.concatenate([packed, scales], axis=-1)


def quantize(values: np.ndarray, name: str) -> np.ndarray:
    """float32 [..., K] -> uint8 [..., row_bytes]: the rows as a q8 / q4 / q4p tensor stores them."""
    values = np.asarray(values, dtype=np.float32)
    *lead, K = values.shape
    problem = storage.get(name).shape_problem(values.shape)
    if problem:
        raise storage.StorageError(problem)
    if name == "q4p":
        return to_panels(quantize(values, "q4"), K)
    groups = values.reshape(*lead, K // GROUP, GROUP)
    if name == "q8":
        scale = np.abs(groups).max(axis=-1) / np.float32(127)
        inv = np.divide(1, scale, out=np.zeros_like(scale), where=scale > 0)
        q = np.clip(np.round(groups * inv[..., None]), -127, 127).astype(np.int8)
        packed = q.reshape(*lead, K).view(np.uint8)
    elif name == "q4":
        index = np.abs(groups).argmax(axis=-1)[..., None]
        scale = np.take_along_axis(groups, index, axis=-1)[..., 0] / np.float32(-8)
        inv = np.divide(1, scale, out=np.zeros_like(scale), where=scale != 0)
        q = (np.clip(np.round(groups * inv[..., None]), -8, 7) + 8).astype(np.uint8)
        half = GROUP // 2
        packed = (q[..., :half] | (q[..., half:] << 4)).reshape(*lead, K // 2)
    else:
        raise storage.StorageError(f"{name} is not a quantized storage type")
    return assemble(name, packed, scale.astype(np.float16))


def assemble(name: str, values: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """q8 / q4 rows uint8 [..., row_bytes] from their parts: `values` uint8 [..., K] (q8: the
    int8 q's bits) or [..., K/2] (q4: each block's 16 bytes of nibbles, blocks in order), and
    `scales` float16 [..., K/32], one per block."""
    return np.concatenate([values, scales.view(np.uint8).reshape(*scales.shape[:-1], -1)], axis=-1)


def dequantize(stored: np.ndarray, name: str, K: int) -> np.ndarray:
    """uint8 [..., row_bytes] -> float32 [..., K]."""
    stored = np.asarray(stored).view(np.uint8)
    *lead, nbytes = stored.shape
    if nbytes != storage.get(name).row_bytes(K):
        raise storage.StorageError(f"{name} rows of {K} values take {storage.get(name).row_bytes(K)} "
                                   f"bytes, not {nbytes}")
    if name == "q4p":
        return dequantize(from_panels(stored, K), "q4", K)
    groups = K // GROUP
    scales = np.ascontiguousarray(stored[..., nbytes - 2 * groups:]).view(np.float16).astype(np.float32)
    if name == "q8":
        q = stored[..., :K].view(np.int8).astype(np.float32)
    elif name == "q4":
        packed = stored[..., :K // 2].reshape(*lead, groups, GROUP // 2)
        q = np.concatenate([packed & 15, packed >> 4], axis=-1).astype(np.float32) - 8
    else:
        raise storage.StorageError(f"{name} is not a quantized storage type")
    return (q.reshape(*lead, groups, GROUP) * scales[..., None]).reshape(*lead, K)


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
