"""moecc: run Qwen3 Mixture-of-Experts models on a CPU, from one mmapped file, on C kernels.

    import moecc
    m = moecc.load("qwen3.moecc")
    print(m.logits(m.tokenizer.encode("Hello")).shape)

Modules: config (the model's config), checkpoint (reading Hugging Face folders), convert
(moecc-convert), format (the .moecc file), quant (storage types, the NumPy oracle), model (the
forward pass), engine (Model, load, generation), sampler, tokenizer, generate (the CLI),
server and serve (moecc-serve, the OpenAI-compatible server), _kernels (the C kernels).
"""
__version__ = "0.1.0"

_ENGINE_NAMES = ("GeneratedToken", "Model", "load")


def __getattr__(name):
    # The engine (and with it the compiled kernels) is imported on first use, so the converter,
    # the file format and the sampler work on their own.
    if name in _ENGINE_NAMES:
        from . import engine
        return getattr(engine, name)
    raise AttributeError(f"module 'moecc' has no attribute {name!r}")


def build_info() -> dict:
    """How the kernels were built: OpenMP on/off, ISA paths compiled in, the one in use."""
    from . import _kernels
    return _kernels.build_info()


__all__ = ["GeneratedToken", "Model", "build_info", "load", "__version__"]
