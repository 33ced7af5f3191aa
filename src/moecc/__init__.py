"""moecc: run Qwen3 Mixture-of-Experts models on a CPU, from one mmapped file, on C kernels.

    import moecc
    m = moecc.load("qwen3.moecc")
    print(m.logits(m.tokenizer.encode("Hello")).shape)

Modules: config (the model's config), checkpoint (reading Hugging Face folders), convert
(moecc-convert), format (the .moecc file), quant (storage types, the NumPy oracle), model (the
forward pass), engine (Model, load, generation), sampler, tokenizer, generate (the CLI),
_kernels (the C kernels).
"""
__version__ = "0.1.0"

from .engine import GeneratedToken, Model, load  # noqa: E402


def build_info() -> dict:
    """How the kernels were built: OpenMP on/off, ISA paths compiled in, the one in use."""
    from . import _kernels
    return _kernels.build_info()


__all__ = ["GeneratedToken", "Model", "build_info", "load", "__version__"]
