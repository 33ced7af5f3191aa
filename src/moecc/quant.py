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

The K types are ggml's Q4_K, Q5_K and Q6_K super-blocks of 256 values (ggml-common.h
block_q4_K / _q5_K / _q6_K; C: moecc_block_q4_k etc.), which GGUF files bring and the converter
writes (`quantize`: the C kernel of kquant.c, whose search its docstring describes; its NumPy
reference is tests/kquant_reference.py).  `unpack_k` takes a super-block apart into

    w[v] = (d * scale[v // 16]) * q[v] - dmin * min[v // 16]          (float32, in that order)

    q4_k (144 bytes): fp16 d, fp16 dmin, 12 bytes of 6-bit scales and mins (8 each, one per
                      sub-block of 32; moecc.h says how they are packed), qs[128]: values
                      64c .. 64c+31 in the low nibbles of qs[32c .. 32c+31], 64c+32 .. 64c+63
                      in their high nibbles; q the nibble
    q5_k (176 bytes): q4_k's d, dmin and 12 bytes, then qh[32], then q4_k's qs[128]; q the
                      nibble + 16 if bit j of qh[l] is set (value 32j + l, sub-block j)
    q6_k (210 bytes): ql[128] (low 4 bits), qh[64] (upper 2 bits), int8 scales[16] (one per 16
                      values), fp16 d; value 128h + 32i + l takes the low (i < 2) or high
                      nibble of ql[64h + 32 (i % 2) + l] and bits 2i, 2i+1 of qh[32h + l];
                      q = those 6 bits - 32, dmin = 0

as ggml's dequantize_row_q4_K / _q5_K / _q6_K compute it.

ggml's other blocks of 32, also read and not written, are q4's with a min and / or a fifth bit
(ggml-common.h block_q4_1 / _q5_0 / _q5_1; byte j of qs: value j low, j + 16 high; the fifth
bit of value i is bit i of qh, a little-endian uint32):

    q4_1 (20 bytes): fp16 d, fp16 m, qs[16]            w = q * d + m
    q5_0 (22 bytes): fp16 d, qh[4], qs[16]             w = (q - 16) * d
    q5_1 (24 bytes): fp16 d, fp16 m, qh[4], qs[16]     w = q * d + m
"""
from __future__ import annotations

import numpy as np

from . import storage

GROUP = storage.QBLOCK  # values per fp16 scale of q8 / q4 / q4p
BLOCK_BYTES = {name: storage.TYPES[name].block_bytes for name in ("q8", "q4")}  # fp16 d, then the values
PANEL_ROWS = storage.TYPES["q4p"].panel_rows
K_TYPES = ("q4_k", "q5_k", "q6_k")  # super-blocks of storage.KBLOCK values
READ_ONLY_32 = ("q4_1", "q5_0", "q5_1")  # ggml's blocks of 32 moecc reads but does not write


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


def quantize(values: np.ndarray, name: str, importance: np.ndarray | None = None) -> np.ndarray:
    """float32 [..., K] -> uint8 [..., row_bytes]: the rows as a q8 / q4 / q4p / K-type tensor
    stores them (q8 / q4: the bytes of ggml's reference quantizers, see the module's docstring;
    the K types: ggml's blocks from moecc's own search, the C kernel kquant.c, whose rounding
    error is weighted per column by `importance`, float32 [K], if given)."""
    values = np.asarray(values, dtype=np.float32)
    *lead, K = values.shape
    problem = storage.get(name).shape_problem(values.shape)
    if problem:
        raise storage.StorageError(problem)
    if name in K_TYPES:
        from . import _kernels
        rows = _kernels.quantize_k(np.ascontiguousarray(values.reshape(-1, K)), name,
                                   importance=importance, threads=_kernels.build_info()["max_threads"])
        return rows.reshape(*lead, rows.shape[-1])
    if importance is not None:
        raise storage.StorageError(f"{name} is quantized without importance weights (only "
                                   f"{', '.join(K_TYPES)} take them)")
    if name == "q4p":
        return to_panels(quantize(values, "q4"), K)
    if name in READ_ONLY_32:
        raise storage.StorageError(f"moecc reads {name} (from GGUF files) but has no quantizer for it")
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
    if name in K_TYPES:
        return dequantize_k(stored, name)
    if name in READ_ONLY_32:
        return dequantize_01(stored, name)
    if name not in BLOCK_BYTES:
        raise storage.StorageError(f"{name} is not a quantized storage type")
    d, qs = disassemble(stored, name)
    if name == "q8":
        q = qs.view(np.int8).astype(np.float32)
    else:
        q = np.concatenate([qs & 15, qs >> 4], axis=-1).astype(np.float32) - 8
    return (q * d.astype(np.float32)[..., None]).reshape(*lead, K)


def _fp16(two_bytes: np.ndarray) -> np.ndarray:
    """uint8 [..., 2] (little-endian fp16 bits) -> float32 [...]"""
    return np.ascontiguousarray(two_bytes).view(np.float16)[..., 0].astype(np.float32)


def q4_k_scales(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """q4_k's 12 bytes uint8 [..., 12] -> (scales, mins) uint8 [..., 8]: sub-block j < 4 takes
    the low 6 bits of byte j (scale) and byte j + 4 (min); j >= 4 the low (scale) and high (min)
    nibble of byte j + 4, topped by the upper 2 bits of bytes j - 4 (scale) and j (min)."""
    lo, mid, hi = packed[..., 0:4], packed[..., 4:8], packed[..., 8:12]
    scales = np.concatenate([lo & 63, (hi & 15) | ((lo >> 6) << 4)], axis=-1)
    mins = np.concatenate([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], axis=-1)
    return scales, mins


def unpack_k(stored: np.ndarray, name: str) -> dict[str, np.ndarray]:
    """K-type rows uint8 [..., row_bytes] -> their super-blocks [..., K/256] taken apart (as C's
    moecc_unpack_k): d, dmin float32 [..., nb]; q int8 [..., nb, 256]; scale, min int16
    [..., nb, 16] (one per 16 values) with w[v] = d * scale[v // 16] * q[v] - dmin * min[v // 16]."""
    bb = storage.get(name).block_bytes
    *lead, nbytes = stored.shape
    blk = np.asarray(stored, np.uint8).reshape(*lead, nbytes // bb, bb)
    if name in ("q4_k", "q5_k"):
        sc, mn = q4_k_scales(blk[..., 4:16])
        at = 16 if name == "q4_k" else 48
        qs = blk[..., at:at + 128].reshape(*blk.shape[:-1], 4, 32)
        q = np.stack([qs & 15, qs >> 4], axis=-2).reshape(*blk.shape[:-1], 8, 32)  # [sub-block j, l]
        if name == "q5_k":
            qh = blk[..., None, 16:48]  # bit j of qh[l]: value 32j + l
            q = q | (((qh >> np.arange(8, dtype=np.uint8)[:, None]) & 1) << 4)
        q = q.reshape(*blk.shape[:-1], 256)
        return {"d": _fp16(blk[..., 0:2]), "dmin": _fp16(blk[..., 2:4]), "q": q.astype(np.int8),
                "scale": np.repeat(sc, 2, axis=-1).astype(np.int16),
                "min": np.repeat(mn, 2, axis=-1).astype(np.int16)}
    if name == "q6_k":
        ql = blk[..., 0:128].reshape(*blk.shape[:-1], 2, 1, 2, 32)  # [half, -, i % 2, l]
        qh = blk[..., 128:192].reshape(*blk.shape[:-1], 2, 1, 32)  # [half, -, l]
        low4 = np.concatenate([ql & 15, ql >> 4], axis=-3).reshape(*blk.shape[:-1], 2, 4, 32)  # i = 2 (i // 2) + i % 2
        up2 = (qh >> np.array([0, 2, 4, 6], np.uint8)[:, None]) & 3
        q = (low4 | (up2 << 4)).astype(np.int16) - 32
        nb = blk.shape[:-1]
        return {"d": _fp16(blk[..., 208:210]), "dmin": np.zeros(nb, np.float32),
                "q": q.reshape(*nb, 256).astype(np.int8),
                "scale": blk[..., 192:208].view(np.int8).astype(np.int16),
                "min": np.zeros((*nb, 16), np.int16)}
    raise storage.StorageError(f"{name} is not a K type ({', '.join(K_TYPES)})")


def dequantize_k(stored: np.ndarray, name: str) -> np.ndarray:
    """K-type rows uint8 [..., row_bytes] -> float32 [..., K], as ggml's dequantize_row_*_K."""
    u = unpack_k(stored, name)
    per16 = (u["d"][..., None] * u["scale"].astype(np.float32))[..., None]  # [..., nb, 16, 1]
    mins = (u["dmin"][..., None] * u["min"].astype(np.float32))[..., None]
    q = u["q"].astype(np.float32).reshape(*u["q"].shape[:-1], 16, 16)
    w = per16 * q - mins
    return w.reshape(*stored.shape[:-1], -1)


def unpack_01(stored: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """q4_1 / q5_0 / q5_1 rows uint8 [..., row_bytes] -> (q int8 [..., K/32, 32], d, m float32
    [..., K/32]) with w = q * d + m (q5_0: q - 16, m = 0), as C's moecc_unpack_01."""
    bb = storage.get(name).block_bytes
    *lead, nbytes = stored.shape
    blk = np.asarray(stored, np.uint8).reshape(*lead, nbytes // bb, bb)
    qs = blk[..., bb - 16:]
    q = np.concatenate([qs & 15, qs >> 4], axis=-1).astype(np.int8)
    if name != "q4_1":
        at = 2 if name == "q5_0" else 4
        qh = np.ascontiguousarray(blk[..., at:at + 4]).view("<u4")  # [..., nb, 1]
        q |= (((qh >> np.arange(32, dtype=np.uint32)) & 1) << 4).astype(np.int8)
    if name == "q5_0":
        return q - np.int8(16), _fp16(blk[..., 0:2]), np.zeros(blk.shape[:-1], np.float32)
    return q, _fp16(blk[..., 0:2]), _fp16(blk[..., 2:4])


def dequantize_01(stored: np.ndarray, name: str) -> np.ndarray:
    """q4_1 / q5_0 / q5_1 rows uint8 [..., row_bytes] -> float32 [..., K], as ggml's
    dequantize_row_*."""
    q, d, m = unpack_01(stored, name)
    w = q.astype(np.float32) * d[..., None]
    if name != "q5_0":
        w = w + m[..., None]
    return w.reshape(*stored.shape[:-1], -1)


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


def encode(array: np.ndarray, source_dtype: str, name: str, importance: np.ndarray | None = None) -> np.ndarray:
    """Checkpoint data (as checkpoint.py views it) -> the bytes of a tensor stored as `name`
    (importance: per-column weights of the rounding error, K types only, see quantize)."""
    if name == "bf16" and source_dtype == "BF16":
        return array  # already bf16 bits: copy as is
    values = source_to_f32(array, source_dtype)
    if name == "f32":
        return values
    if name == "bf16":
        return f32_to_bf16(values)
    if name == "f16":
        return values.astype(np.float16)
    return quantize(values, name, importance)


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
    and float32 scales [..., K/block], x ~= scale * q, scale = max|x| / 127 per block (block 32:
    the q8_32 rows of q8 / q4 / q4p; 256: the q8_k rows of the K types)."""
    x = np.asarray(x, dtype=np.float32)
    blocks = x.reshape(*x.shape[:-1], -1, block)
    scale = np.abs(blocks).max(axis=-1) / np.float32(127)
    inv = np.divide(1, scale, out=np.zeros_like(scale), where=scale > 0)
    q = np.clip(np.round(blocks * inv[..., None]), -127, 127).astype(np.int8)
    return q.reshape(x.shape), scale
