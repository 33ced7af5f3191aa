"""A GGUF file of Qwen3-30B-A3B's geometry straight from random quantized blocks, no checkpoint.

    python -m moecc.synthetic --gguf Q4_K_M --layers 48 --out syn48-Q4_K_M.gguf

writes what llama.cpp's converter and llama-quantize would make of a synthetic checkpoint
(moecc.synthetic.checkpoint), in the type mix of llama-quantize's `Q4_K_M` or `Q8_0`, through
the `gguf` package's writer, so that the full 48-layer model needs no 61 GB bf16 source and both
engines read the very same bytes.  Each block's bytes are uniformly random but for its fp16
scale fields, set so that the weights have roughly the checkpoint's spread (std 0.02); norms are
1.0, the router F32, as llama.cpp keeps them.  Tensors stream to the file one at a time.
"""
from __future__ import annotations

import json
import os
import zlib

import numpy as np

from ..config import Qwen3MoeConfig, TensorSpec, tensor_specs
from ..formats.gguf import gguf_name, writing
from . import synthetic_files
from .checkpoint import WEIGHT_STD, draw_bf16, normal_bf16_table
from .quantized import quantized_scale

MIXES = ("Q4_K_M", "Q8_0")

# Where each block type's fp16 scale fields lie (byte offsets in a block, ggml-common.h) and the
# magnitude that gives weights of std ~WEIGHT_STD when every other byte is random: the first is
# d (sign random), a second one dmin (positive).  Q4_K: d * 6-bit scale * nibble - dmin * 6-bit
# min; Q6_K: d * int8 scale * (6-bit value - 32).
_SCALE_FIELDS = {
    "Q8_0": ((0, quantized_scale("q8")),),
    "Q4_K": ((0, WEIGHT_STD / (72 * 4.6)), (2, WEIGHT_STD / (72 * 7.5))),
    "Q6_K": ((208, WEIGHT_STD / (74 * 18.5)),),
}


def use_more_bits(layer: int, layers: int) -> bool:
    """llama-quantize's choice of the layers whose attn_v and ffn_down get more bits (Q4_K_M)."""
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


def mix_type(mix: str, spec: TensorSpec, layers: int) -> str:
    """The ggml type name llama-quantize gives tensor `spec` in a file of type `mix` (qwen3moe,
    more than 8 experts; every row a multiple of 256 values)."""
    if spec.role in ("norm", "router"):
        return "F32"
    if mix == "Q8_0":
        return "Q8_0"
    if spec.role == "lm_head":
        return "Q6_K"
    if spec.field in ("v_proj", "down_proj") and use_more_bits(spec.layer, layers):
        return "Q6_K"
    return "Q4_K"


def _random_blocks(type_name: str, count: int, rng: np.random.Generator) -> np.ndarray:
    import gguf
    qtype = gguf.GGMLQuantizationType[type_name]
    block_values, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    blocks = count // block_values
    raw = rng.bit_generator.random_raw(-(-blocks * block_bytes // 8)).view(np.uint8)[:blocks * block_bytes]
    raw = raw.reshape(blocks, block_bytes)
    for i, (offset, magnitude) in enumerate(_SCALE_FIELDS[type_name]):
        field = raw[:, offset:offset + 2].view(np.uint16)
        sign = field & np.uint16(0x8000) if i == 0 else np.uint16(0)
        field[:] = sign | np.array(magnitude, np.float16).view(np.uint16)
    return raw.reshape(-1)


def _tensor_data(spec: TensorSpec, type_name: str, seed: int, normal: np.ndarray) -> np.ndarray:
    count = int(np.prod(spec.shape))
    if spec.role == "norm":
        return np.ones(count, np.float32)
    if type_name == "F32":  # the router, drawn as the checkpoint's bf16 weights are
        return (draw_bf16(normal, seed, spec.name, 0, count).astype(np.uint32) << 16).view(np.float32)
    rng = np.random.Generator(np.random.SFC64([seed, zlib.crc32(spec.name.encode())]))
    return _random_blocks(type_name, count, rng)


def add_tokenizer_metadata(writer, files: dict[str, bytes], vocab_size: int) -> None:
    """The tokenizer keys llama.cpp's converter writes for a Qwen3 tokenizer.json: as it does,
    the token list is padded to the embedding's rows (Qwen3: 151,669 tokens, 151,936 rows) with
    UNUSED tokens "[PADi]"."""
    import gguf
    tok = json.loads(files["tokenizer.json"])
    config = json.loads(files["tokenizer_config.json"])
    added = {t["id"]: t for t in tok["added_tokens"]}
    by_id = {i: t for t, i in tok["model"]["vocab"].items()} | {i: t["content"] for i, t in added.items()}
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    types = [gguf.TokenType.UNUSED if i not in by_id else gguf.TokenType.NORMAL if i not in added else
             gguf.TokenType.CONTROL if added[i]["special"] else gguf.TokenType.USER_DEFINED
             for i in range(vocab_size)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    ids = {t: i for i, t in enumerate(tokens)}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_eos_token_id(ids[config["eos_token"]])
    writer.add_pad_token_id(ids[config["pad_token"]])
    writer.add_bos_token_id(ids["<|endoftext|>"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(config["chat_template"])


def write_gguf_model(path: str, layers: int, mix: str = "Q4_K_M", seed: int = 0, vocab_size: int | None = None,
                     **overrides) -> dict:
    """Write a GGUF file of Qwen3-30B-A3B's geometry with `layers` layers, in llama-quantize's
    type mix `mix` (Q4_K_M or Q8_0), from random blocks.  `overrides` replace config keys (a tiny
    geometry for tests; a Q4_K_M mix needs every row length a multiple of 256).  It is written
    under a temporary name and renamed at the end.  Returns {"bytes": file size, "config": config dict}."""
    import gguf
    if mix not in MIXES:
        raise ValueError(f"mix must be one of {', '.join(MIXES)}, not {mix!r}")
    raw_cfg, files = synthetic_files(layers, vocab_size, **overrides)
    cfg = Qwen3MoeConfig.from_dict(raw_cfg)
    gen = json.loads(files["generation_config.json"])
    with writing(path) as w:
        w.add_name("moecc synthetic qwen3-30b-a3b")
        w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M if mix == "Q4_K_M" else gguf.LlamaFileType.MOSTLY_Q8_0)
        w.add_block_count(cfg.num_hidden_layers)
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(cfg.num_attention_heads)
        w.add_head_count_kv(cfg.num_key_value_heads)
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_rope_freq_base(cfg.rope_theta)
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        w.add_expert_count(cfg.num_experts)
        w.add_expert_used_count(cfg.num_experts_per_tok)
        w.add_expert_feed_forward_length(cfg.moe_intermediate_size)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_sampling_top_k(gen["top_k"])
        w.add_sampling_top_p(gen["top_p"])
        w.add_sampling_temp(gen["temperature"])
        add_tokenizer_metadata(w, files, cfg.vocab_size)
        specs = tensor_specs(cfg)
        types = {s.name: mix_type(mix, s, cfg.num_hidden_layers) for s in specs}
        for s in specs:
            qtype = gguf.GGMLQuantizationType[types[s.name]]
            block_values, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
            w.add_tensor_info(gguf_name(s), s.shape, np.dtype(np.float32),
                              int(np.prod(s.shape)) // block_values * block_bytes, raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        normal = normal_bf16_table()
        for s in specs:
            w.write_tensor_data(_tensor_data(s, types[s.name], seed, normal))
    return {"bytes": os.path.getsize(path), "config": raw_cfg}
