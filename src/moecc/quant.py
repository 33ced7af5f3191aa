"""Storage types in NumPy: encode float32 weights into a .moecc dtype and decode them back.

This is the oracle the C kernels are tested against.  bf16 is kept as its raw uint16 bits.
"""
from __future__ import annotations

import numpy as np

# how a Hugging Face safetensors dtype is viewed by checkpoint.py
SOURCE_DTYPES = ("F32", "F16", "BF16")


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


def encode(array: np.ndarray, source_dtype: str, dtype: str) -> np.ndarray:
    """Checkpoint data (as checkpoint.py views it) -> the bytes of a .moecc tensor of `dtype`."""
    if dtype == "bf16" and source_dtype == "BF16":
        return array  # already bf16 bits: copy as is
    values = source_to_f32(array, source_dtype)
    if dtype == "f32":
        return values
    if dtype == "bf16":
        return f32_to_bf16(values)
    raise ValueError(f"unknown storage dtype {dtype!r}")


def decode(stored: np.ndarray, dtype: str) -> np.ndarray:
    """A .moecc tensor view -> float32 values."""
    if dtype == "f32":
        return np.asarray(stored, dtype=np.float32)
    if dtype == "bf16":
        return bf16_to_f32(stored)
    raise ValueError(f"unknown storage dtype {dtype!r}")
