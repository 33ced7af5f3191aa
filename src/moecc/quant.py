"""Storage types in NumPy: encode float32 weights into a .moecc dtype and decode them back.

This is the oracle the C kernels are tested against.  bf16 is kept as its raw uint16 bits.

Group-wise quantized types store a weight matrix [N, K] row by row; each row of K values is cut
into K/G groups of G consecutive values (G in GROUP_SIZES), and holds, in this order:

    q8:  int8   q[K]           q = round(w / d), d = max|w| / 127 over the group
         fp16   d[K/G]         one scale per group
    q4:  uint8  packed[K/2]    group g occupies bytes g*G/2 .. (g+1)*G/2 - 1; byte j of a group
                               holds value j in its low nibble and value j + G/2 in its high
                               nibble, each as q + 8 in 0..15
         fp16   d[K/G]         q = clamp(round(w / d), -8, 7), d = m / -8 where m is the value
                               of largest magnitude in the group (so m itself maps to -8 exactly)

so w ~= d * q (4.5 bits per weight for q4 at G = 32, 8.5 for q8).  A stacked tensor [E, N, K]
is E such matrices, one after another.  `row_bytes` gives a row's size.

q4p is q4 with G = 32 laid out for the kernels in panels of PANEL_ROWS = 16 rows (N % 16 == 0):
panel p holds rows 16p .. 16p+15 as K/32 block columns of 288 bytes each; block column b is

    uint8  chunk[4][16][4]     chunk c, row r: bytes 16b+4c .. 16b+4c+3 of row r's q4 packed
                               values (values 4c..4c+3 of block b in the low nibbles,
                               16+4c..16+4c+3 in the high nibbles)
    fp16   d[16]               row r's scale of block b

so one 64-byte load holds four values of the same block for 16 rows, and the int8 dot products
of a block add up in 16 lanes, one per row, under one vector of scales.  The bytes per row are
q4's (a q4p tensor has the shape [..., N, row_bytes] of its q4 twin, though its "rows" are not
rows).  The converter stores as q4p every q4 matrix it can (G = 32, rows a multiple of 16) that
is only multiplied, never looked up by row (so not the embedding).
"""
from __future__ import annotations

import numpy as np

QUANTIZED = ("q8", "q4")  # what a user picks
STORED_QUANTIZED = QUANTIZED + ("q4p",)  # what a file holds
GROUP_SIZES = (32, 64, 128, 256)
PANEL_ROWS = 16
PANEL_GROUP = 32  # q4p's only group size


def row_bytes(dtype: str, K: int, group_size: int = 0) -> int:
    """Bytes of one stored row of K values."""
    if dtype == "f32":
        return 4 * K
    if dtype == "bf16":
        return 2 * K
    if dtype in STORED_QUANTIZED:
        if group_size not in GROUP_SIZES or K % group_size:
            raise ValueError(f"{dtype}: a row of {K} values cannot be cut into groups of {group_size}")
        if dtype == "q4p" and group_size != PANEL_GROUP:
            raise ValueError(f"q4p has groups of {PANEL_GROUP}, not {group_size}")
        groups = K // group_size
        return (K if dtype == "q8" else K // 2) + 2 * groups
    raise ValueError(f"unknown storage dtype {dtype!r}")


def can_panel(shape: tuple, group_size: int) -> bool:
    """Whether q4 rows of a matrix (or stack) of this shape [..., N, K] can be stored as q4p."""
    return group_size == PANEL_GROUP and len(shape) >= 2 and shape[-2] % PANEL_ROWS == 0 \
        and shape[-1] % PANEL_GROUP == 0


def to_panels(rows: np.ndarray, K: int) -> np.ndarray:
    """q4 (G = 32) rows uint8 [..., N, row_bytes] -> the same matrices as q4p (same shape)."""
    *lead, N, nbytes = rows.shape
    nb = K // PANEL_GROUP
    packed = rows[..., :K // 2].reshape(*lead, N // PANEL_ROWS, PANEL_ROWS, nb, 4, 4)
    scales = rows[..., K // 2:].reshape(*lead, N // PANEL_ROWS, PANEL_ROWS, nb, 2)
    a = len(lead)  # [panel, row, block, chunk, byte] -> [panel, block, chunk, row, byte]
    packed = packed.transpose(*range(a), a, a + 2, a + 3, a + 1, a + 4).reshape(*lead, N // PANEL_ROWS, nb, 256)
    scales = scales.transpose(*range(a), a, a + 2, a + 1, a + 3).reshape(*lead, N // PANEL_ROWS, nb, 32)
    return np.concatenate([packed, scales], axis=-1).reshape(*lead, N, nbytes)


def from_panels(stored: np.ndarray, K: int) -> np.ndarray:
    """q4p uint8 [..., N, row_bytes] -> the q4 rows it holds."""
    *lead, N, nbytes = stored.shape
    nb = K // PANEL_GROUP
    blocks = stored.reshape(*lead, N // PANEL_ROWS, nb, 288)
    a = len(lead)
    packed = blocks[..., :256].reshape(*lead, N // PANEL_ROWS, nb, 4, PANEL_ROWS, 4)
    packed = packed.transpose(*range(a), a, a + 3, a + 1, a + 2, a + 4).reshape(*lead, N, K // 2)
    scales = blocks[..., 256:].reshape(*lead, N // PANEL_ROWS, nb, PANEL_ROWS, 2)
    scales = scales.transpose(*range(a), a, a + 2, a + 1, a + 3).reshape(*lead, N, 2 * nb)
    return np.concatenate([packed, scales], axis=-1)


def quantize(values: np.ndarray, dtype: str, group_size: int) -> np.ndarray:
    """float32 [..., K] -> uint8 [..., row_bytes]: the rows as a q8 / q4 / q4p tensor stores them."""
    values = np.asarray(values, dtype=np.float32)
    *lead, K = values.shape
    row_bytes(dtype, K, group_size)  # validates the grouping
    if dtype == "q4p":
        if not can_panel(values.shape, group_size):
            raise ValueError(f"q4p needs rows in multiples of {PANEL_ROWS}, got shape {values.shape}")
        return to_panels(quantize(values, "q4", group_size), K)
    groups = values.reshape(*lead, K // group_size, group_size)
    if dtype == "q8":
        scale = np.abs(groups).max(axis=-1) / np.float32(127)
        inv = np.divide(1, scale, out=np.zeros_like(scale), where=scale > 0)
        q = np.clip(np.round(groups * inv[..., None]), -127, 127).astype(np.int8)
        packed = q.reshape(*lead, K).view(np.uint8)
    else:
        index = np.abs(groups).argmax(axis=-1)[..., None]
        scale = np.take_along_axis(groups, index, axis=-1)[..., 0] / np.float32(-8)
        inv = np.divide(1, scale, out=np.zeros_like(scale), where=scale != 0)
        q = (np.clip(np.round(groups * inv[..., None]), -8, 7) + 8).astype(np.uint8)
        half = group_size // 2
        packed = (q[..., :half] | (q[..., half:] << 4)).reshape(*lead, K // 2)
    scales = scale.astype(np.float16).view(np.uint8).reshape(*lead, -1)
    return np.concatenate([packed, scales], axis=-1)


def dequantize(stored: np.ndarray, dtype: str, K: int, group_size: int) -> np.ndarray:
    """uint8 [..., row_bytes] -> float32 [..., K]."""
    stored = np.asarray(stored).view(np.uint8)
    *lead, nbytes = stored.shape
    if nbytes != row_bytes(dtype, K, group_size):
        raise ValueError(f"{dtype} rows of {K} values in groups of {group_size} take "
                         f"{row_bytes(dtype, K, group_size)} bytes, not {nbytes}")
    if dtype == "q4p":
        return dequantize(from_panels(stored, K), "q4", K, group_size)
    groups = K // group_size
    scales = np.ascontiguousarray(stored[..., nbytes - 2 * groups:]).view(np.float16).astype(np.float32)
    if dtype == "q8":
        q = stored[..., :K].view(np.int8).astype(np.float32)
    else:
        packed = stored[..., :K // 2].reshape(*lead, groups, group_size // 2)
        q = np.concatenate([packed & 15, packed >> 4], axis=-1).astype(np.float32) - 8
    return (q.reshape(*lead, groups, group_size) * scales[..., None]).reshape(*lead, K)


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


def encode(array: np.ndarray, source_dtype: str, dtype: str, group_size: int = 0) -> np.ndarray:
    """Checkpoint data (as checkpoint.py views it) -> the bytes of a .moecc tensor of `dtype`."""
    if dtype == "bf16" and source_dtype == "BF16":
        return array  # already bf16 bits: copy as is
    values = source_to_f32(array, source_dtype)
    if dtype == "f32":
        return values
    if dtype == "bf16":
        return f32_to_bf16(values)
    if dtype in STORED_QUANTIZED:
        return quantize(values, dtype, group_size)
    raise ValueError(f"unknown storage dtype {dtype!r}")


def decode(stored: np.ndarray, dtype: str, K: int = 0, group_size: int = 0) -> np.ndarray:
    """A .moecc tensor view -> float32 values (K: the logical row length, for quantized types)."""
    if dtype == "f32":
        return np.asarray(stored, dtype=np.float32)
    if dtype == "bf16":
        return bf16_to_f32(stored)
    if dtype in STORED_QUANTIZED:
        return dequantize(stored, dtype, K, group_size)
    raise ValueError(f"unknown storage dtype {dtype!r}")


def quantize_activations(x: np.ndarray, block: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """The reference for the kernels' activation quantization: float32 [..., K] -> int8 values
    and float32 scales [..., K/block], x ~= scale * q, scale = max|x| / 127 per block."""
    x = np.asarray(x, dtype=np.float32)
    blocks = x.reshape(*x.shape[:-1], -1, block)
    scale = np.abs(blocks).max(axis=-1) / np.float32(127)
    inv = np.divide(1, scale, out=np.zeros_like(scale), where=scale > 0)
    q = np.clip(np.round(blocks * inv[..., None]), -127, 127).astype(np.int8)
    return q.reshape(x.shape), scale
