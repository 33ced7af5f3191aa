"""Storage types: how a tensor's values lie in a file and in memory, and what the kernels read.

This is the one table of them in Python; `moecc.h` (`moecc_storage`) and `storage.c` spell the
same table once in C, and a test holds the two equal.  A file names a tensor's type in its
header (the `.moecc` header's `dtype` key); everything else follows from this table.

Each type stores a row of K values as K / block_values blocks of block_bytes bytes:

    name  block (values -> bytes)   bits/weight  rows looked up alone  activations  what
    f32   1 -> 4                    32           yes                   f32          IEEE float32
    bf16  1 -> 2                    16           yes                   f32          bfloat16 bits (uint16)
    f16   1 -> 2                    16           yes                   f32          IEEE half (uint16 in files)
    q8    32 -> 34                  8.5          yes                   q8_32        ggml's Q8_0
    q4    32 -> 18                  4.5          yes                   q8_32        ggml's Q4_0
    q4p   32 -> 18                  4.5          no (panels of 16)     q8_32        q4 blocks of 16 rows interleaved
    q4_k  256 -> 144                4.5          yes                   q8_k         ggml's Q4_K
    q6_k  256 -> 210                6.5625       yes                   q8_k         ggml's Q6_K
    q5_k  256 -> 176                5.5          yes                   q8_k         ggml's Q5_K
    q5_0  32 -> 22                  5.5          yes                   q8_32        ggml's Q5_0
    q5_1  32 -> 24                  6            yes                   q8_32        ggml's Q5_1
    q4_1  32 -> 20                  5            yes                   q8_32        ggml's Q4_1

"activations" is the form the kernels meet the type's rows with: `f32` the float32 rows as they
are; `q8_32` int8 per block of 32 with a float scale and the block's sum (what ggml pairs Q8_0 /
Q4_0 with); `q8_k` int8 per block of 256 with a float scale and sums per 16 (ggml's Q8_K, what
its K types read).  Weights of two types with the same kind read the same quantized rows.

The byte layouts and their NumPy encoders and decoders (the oracle the C kernels are tested
against) are in `moecc.quant`.  Adding a type means a row here, a row in storage.c, its
quant.py decoder (and encoder, if moecc writes it) and its kernels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


class StorageError(ValueError):
    """A storage type that does not exist, or that cannot hold a tensor of the given shape."""


@dataclass(frozen=True)
class StorageType:
    name: str
    code: int  # the C enum value (moecc_storage)
    block_values: int  # values per block: a row of K values is K / block_values blocks
    block_bytes: int  # bytes per block
    view_dtype: np.dtype  # the NumPy dtype of the view the kernels take (quantized: bytes)
    row_lookup: bool  # a row can be read on its own (an embedding table can be stored so)
    panel_rows: int = 1  # rows interleaved block by block; a matrix has a multiple of them
    activations: str = "f32"  # the activation rows its kernels read: one of ACTIVATIONS
    ggml_type: int | None = None  # the same bytes as this ggml type (GGUF files name types so); None: moecc's own

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.block_bytes / self.block_values

    def row_bytes(self, K: int) -> int:
        """Bytes of one stored row of K values."""
        if K % self.block_values:
            raise StorageError(f"{self.name} stores rows in blocks of {self.block_values} values; "
                               f"a row of {K} is not a whole number of them")
        return K // self.block_values * self.block_bytes

    def shape_problem(self, shape: tuple[int, ...]) -> str | None:
        """Why a tensor of logical `shape` [..., rows, K] cannot be stored as this type (None: it can)."""
        if len(shape) < 1 or any(int(s) <= 0 for s in shape):
            return f"shape {list(shape)} is not a valid tensor shape"
        if shape[-1] % self.block_values:
            return (f"{self.name} stores rows in blocks of {self.block_values} values, "
                    f"which do not divide the row length {shape[-1]}")
        if self.panel_rows > 1 and (len(shape) < 2 or shape[-2] % self.panel_rows):
            return f"{self.name} stores matrices of a multiple of {self.panel_rows} rows, not shape {list(shape)}"
        return None

    def tensor_bytes(self, shape: tuple[int, ...]) -> int:
        """Bytes of a tensor of logical `shape`; StorageError if this type cannot hold it."""
        problem = self.shape_problem(tuple(shape))
        if problem:
            raise StorageError(problem)
        rows = math.prod(int(s) for s in shape[:-1])  # Python ints: a damaged shape cannot overflow
        return rows * self.row_bytes(int(shape[-1]))

    def view_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of the kernels' view of a tensor: [..., rows, elements of view_dtype per row]."""
        return (*shape[:-1], self.row_bytes(shape[-1]) // self.view_dtype.itemsize)


QBLOCK = 32  # values per block of q8 / q4 / q4p / q4_1 / q5_0 / q5_1, and of q8_32 activations
KBLOCK = 256  # values per super-block of the K types, and per block of q8_k activations
ACTIVATIONS = ("f32", "q8_32", "q8_k")  # activation kinds, in the order of C's moecc_act

TYPES: dict[str, StorageType] = {t.name: t for t in (
    StorageType("f32", 0, 1, 4, np.dtype(np.float32), row_lookup=True, ggml_type=0),
    StorageType("bf16", 1, 1, 2, np.dtype(np.uint16), row_lookup=True, ggml_type=30),
    StorageType("f16", 2, 1, 2, np.dtype(np.float16), row_lookup=True, ggml_type=1),
    StorageType("q8", 3, QBLOCK, 34, np.dtype(np.uint8), row_lookup=True, activations="q8_32",
                ggml_type=8),  # Q8_0
    StorageType("q4", 4, QBLOCK, 18, np.dtype(np.uint8), row_lookup=True, activations="q8_32",
                ggml_type=2),  # Q4_0
    StorageType("q4p", 5, QBLOCK, 18, np.dtype(np.uint8), row_lookup=False, panel_rows=16,
                activations="q8_32"),
    StorageType("q4_k", 6, KBLOCK, 144, np.dtype(np.uint8), row_lookup=True, activations="q8_k",
                ggml_type=12),  # Q4_K
    StorageType("q6_k", 7, KBLOCK, 210, np.dtype(np.uint8), row_lookup=True, activations="q8_k",
                ggml_type=14),  # Q6_K
    StorageType("q5_k", 8, KBLOCK, 176, np.dtype(np.uint8), row_lookup=True, activations="q8_k",
                ggml_type=13),  # Q5_K
    StorageType("q5_0", 9, QBLOCK, 22, np.dtype(np.uint8), row_lookup=True, activations="q8_32",
                ggml_type=6),  # Q5_0
    StorageType("q5_1", 10, QBLOCK, 24, np.dtype(np.uint8), row_lookup=True, activations="q8_32",
                ggml_type=7),  # Q5_1
    StorageType("q4_1", 11, QBLOCK, 20, np.dtype(np.uint8), row_lookup=True, activations="q8_32",
                ggml_type=3),  # Q4_1
)}


BY_GGML_TYPE: dict[int, StorageType] = {t.ggml_type: t for t in TYPES.values() if t.ggml_type is not None}


def get(name: str) -> StorageType:
    """The storage type called `name`; StorageError naming the known ones otherwise."""
    try:
        return TYPES[name]
    except (KeyError, TypeError):
        raise StorageError(f"unknown storage type {name!r}; moecc has {', '.join(TYPES)}") from None
