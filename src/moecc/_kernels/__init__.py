"""moecc's compiled kernels: C (moecc.h) behind thin Cython bindings, OpenMP inside.

Every parallel kernel takes a required keyword `threads`. Weights are float32 arrays, uint16
arrays holding bf16 bit patterns, or uint8 rows of group-wise quantized q8 / q4 (pass
wtype="q8" / "q4" and group_size; row_bytes() gives a row's size, moecc.quant is the NumPy
oracle); activations are float32 (quantized per block of 32 inside the kernels for q8 / q4).
The instruction set is chosen once from cpuid (best of avx512vnni > avx512 > avx2 > generic);
MOECC_ISA=generic|avx2|avx512|avx512vnni forces one at import, set_isa() at run time.
"""
import os as _os

from ._ext import (
    attention,
    build_info,
    embedding,
    get_isa,
    matmul,
    moe_ffn,
    moe_scratch_floats,
    quantize_activations,
    rmsnorm,
    rope,
    router_topk,
    row_bytes,
    set_isa,
)

__all__ = [
    "attention",
    "build_info",
    "embedding",
    "get_isa",
    "matmul",
    "moe_ffn",
    "moe_scratch_floats",
    "quantize_activations",
    "rmsnorm",
    "rope",
    "router_topk",
    "row_bytes",
    "set_isa",
]

_forced = _os.environ.get("MOECC_ISA", "").strip()
if _forced:
    try:
        set_isa(_forced)
    except ValueError as e:
        raise ValueError(f"MOECC_ISA={_forced!r}: {e}") from None
