"""moecc's compiled kernels: C (moecc.h) behind thin Cython bindings, OpenMP inside.

Every parallel kernel takes a required keyword `threads`. Weights are float32 arrays, or uint16
arrays holding bf16 bit patterns; activations are float32. The instruction set is chosen once
from cpuid (best of avx512 > avx2 > generic); MOECC_ISA=generic|avx2|avx512 forces one at import,
set_isa() at run time.
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
    rmsnorm,
    rope,
    router_topk,
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
    "rmsnorm",
    "rope",
    "router_topk",
    "set_isa",
]

_forced = _os.environ.get("MOECC_ISA", "").strip()
if _forced:
    try:
        set_isa(_forced)
    except ValueError as e:
        raise ValueError(f"MOECC_ISA={_forced!r}: {e}") from None
