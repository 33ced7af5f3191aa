"""Synthetic models with the geometry of Qwen3-30B-A3B, for benchmarks: random weights, real shapes.

    python -m moecc.synthetic --layers 8 --out /work/scratch/syn8             (a checkpoint)
    python -m moecc.synthetic --quant q4 --layers 48 --out syn48-q4.moecc      (a .moecc file)
    python -m moecc.synthetic --gguf Q4_K_M --layers 48 --out syn48.gguf       (a GGUF file)

The package owns the model these make -- Qwen/Qwen3-30B-A3B's config.json and
generation_config.json, with the layer count (and, for tests, any key) replaced -- and every
non-weight file of it (`synthetic_files`).  One module per job:

    tokenizer   a byte-level BPE tokenizer with Qwen3's layout (ids, added tokens, pre-tokenizer)
    checkpoint  a Hugging Face checkpoint folder of bf16 N(0, 0.02²) weights (make_checkpoint),
                which both moecc-convert and llama.cpp's converter read
    quantized   the q4 / q8 .moecc file moecc-convert would make from one, straight from random
                quantized data (write_quantized_model), so 48 layers need no 61 GB bf16 source
    gguf_file   the GGUF file llama.cpp's converter and llama-quantize would make from one, in the
                Q4_K_M or Q8_0 type mix, straight from random quantized blocks (write_gguf_model)
    __main__    the command line (also tools/make_synthetic.py)
"""
from __future__ import annotations

import json

from .tokenizer import QWEN_REGULAR_TOKENS, tokenizer_files

SYNTHETIC_MODEL = "qwen3-30b-a3b"  # the name of this geometry (moecc-bench --synthetic, writer info)

# config.json of Qwen/Qwen3-30B-A3B, but for num_hidden_layers / max_window_layers (set per call)
QWEN3_30B_A3B_CONFIG = {
    "architectures": ["Qwen3MoeForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "decoder_sparse_step": 1,
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 6144,
    "max_position_embeddings": 40960,
    "max_window_layers": 48,
    "mlp_only_layers": [],
    "model_type": "qwen3_moe",
    "moe_intermediate_size": 768,
    "norm_topk_prob": True,
    "num_attention_heads": 32,
    "num_experts": 128,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 48,
    "num_key_value_heads": 4,
    "output_router_logits": False,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "router_aux_loss_coef": 0.001,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.51.0",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

GENERATION_CONFIG = {
    "bos_token_id": 151643,
    "do_sample": True,
    "eos_token_id": [151645, 151643],
    "pad_token_id": 151643,
    "temperature": 0.6,
    "top_k": 20,
    "top_p": 0.95,
    "transformers_version": "4.51.0",
}


def synthetic_files(layers: int, vocab_size: int | None = None, **overrides) -> tuple[dict, dict[str, bytes]]:
    """The config dict and every non-weight file of a synthetic checkpoint with `layers` layers
    (config.json, generation_config.json and the tokenizer files), as bytes.  `overrides`
    replace config.json keys (e.g. hidden_size=64 for a tiny test model)."""
    cfg = dict(QWEN3_30B_A3B_CONFIG, num_hidden_layers=layers, max_window_layers=layers)
    if vocab_size is not None:
        cfg["vocab_size"] = vocab_size
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}")
    cfg.update(overrides)
    if layers < 1:
        raise ValueError("layers must be at least 1")
    files, n_regular = tokenizer_files(cfg["vocab_size"])
    gen = dict(GENERATION_CONFIG)
    if n_regular != QWEN_REGULAR_TOKENS:  # a small vocabulary moves the added tokens down
        cfg.update(bos_token_id=n_regular, eos_token_id=n_regular + 2)
        gen.update(bos_token_id=n_regular, eos_token_id=[n_regular + 2, n_regular], pad_token_id=n_regular)
    for name, data in (("config.json", cfg), ("generation_config.json", gen)):
        files[name] = (json.dumps(data, indent=2) + "\n").encode()
    return cfg, files
