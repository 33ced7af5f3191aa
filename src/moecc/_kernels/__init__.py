"""moecc's compiled kernels: C (moecc.h) behind thin Cython bindings, OpenMP inside.

Every parallel kernel takes a required keyword `threads`. Weights are stored in one of the
types of moecc.storage (storage_types() is the C side of that table): float32, uint16 holding
bf16 bits, float16, or uint8 rows of quantized blocks (q8, q4, q4p, ggml's K types and
q4_1 / q5_0 / q5_1: pass storage="q8" etc.; row_bytes() gives a row's size, moecc.quant is the
NumPy oracle). Activations are float32 (quantized inside the kernels to the kind the weights'
type reads: per block of 32, or of 256 for the K types).
The instruction set is chosen once from cpuid (best of avx512vnni > avx512 > avx2 > generic);
MOECC_ISA=generic|avx2|avx512|avx512vnni forces one at import, set_isa() at run time.
read_bandwidth() is the machine's, not a model's: the memory read bandwidth that bounds decode
(moecc.bandwidth).
"""
import os as _os

from ._ext import (
    BLOCKS,
    Forward,
    Statistics,
    attention,
    bandwidth_load_bits,
    bandwidth_step,
    build_info,
    embedding,
    get_isa,
    matmul,
    moe_ffn,
    moe_scratch_floats,
    quantize_activations,
    quantize_k,
    read_bandwidth,
    rmsnorm,
    rope,
    router_topk,
    row_bytes,
    set_isa,
    storage_types,
    xq_bytes,
)

__all__ = [
    "BLOCKS",
    "Forward",
    "Statistics",
    "attention",
    "bandwidth_load_bits",
    "bandwidth_step",
    "build_info",
    "embedding",
    "get_isa",
    "matmul",
    "moe_ffn",
    "moe_scratch_floats",
    "quantize_activations",
    "quantize_k",
    "read_bandwidth",
    "rmsnorm",
    "rope",
    "router_topk",
    "row_bytes",
    "set_isa",
    "storage_types",
    "xq_bytes",
]

_forced = _os.environ.get("MOECC_ISA", "").strip()
if _forced:
    try:
        set_isa(_forced)
    except ValueError as e:
        raise ValueError(f"MOECC_ISA={_forced!r}: {e}") from None
