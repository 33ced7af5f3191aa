"""The Qwen3-MoE forward pass, as transformers' `Qwen3MoeForCausalLM` computes it, on C kernels.

Shapes: T tokens in this step, D hidden, Hq / Hkv query / key-value heads of width hd,
E experts of which k are active, I expert (or dense MLP) width, V vocabulary, C context.

    x = embed(ids)                                                 [T, D]
    for each layer:
        x = x + o_proj(attention(rope(q_norm(q)), rope(k_norm(k)), v))   over the KV cache
        x = x + moe(post_attention_layernorm(x))     (dense SwiGLU MLP in mlp-only layers)
    logits = lm_head(norm(x))                                      [T, V]

A prompt goes through in chunks of up to `PREFILL_CHUNK` tokens; decoding feeds one token at
a time.  Every buffer is allocated once, in `Model.__init__`: the per-token path allocates nothing.
The KV cache holds keys and values in f16 (half the bytes a long context reads per decoded token,
and half the memory) or, on request, float32 (the exact path the tests hold to transformers).
"""
from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from . import _kernels as K
from .config import Qwen3MoeConfig, layer_tensor_specs

PREFILL_CHUNK = 256
KV_CACHE_DTYPES = {"f16": np.float16, "f32": np.float32}


class Weight(NamedTuple):
    """A tensor as stored: the mapped data and its storage type (moecc.storage)."""
    data: np.ndarray  # f32, bf16 bits (uint16), f16, or q8 / q4 / q4p bytes (uint8 [..., rows, row_bytes])
    storage: str  # a name in moecc.storage.TYPES

    def stacked(self) -> "Weight":
        """The same matrix as a stack of one (a dense MLP runs as a single always-chosen expert)."""
        return self._replace(data=self.data[np.newaxis])


@dataclass
class LayerWeights:
    """One decoder layer's weights; the field names are config.layer_tensor_specs' `field`s."""
    input_layernorm: np.ndarray  # [D] f32
    q_proj: Weight  # [Hq*hd, D]
    k_proj: Weight  # [Hkv*hd, D]
    v_proj: Weight  # [Hkv*hd, D]
    o_proj: Weight  # [D, Hq*hd]
    q_norm: np.ndarray  # [hd] f32
    k_norm: np.ndarray  # [hd] f32
    post_attention_layernorm: np.ndarray  # [D] f32
    gate_proj: Weight  # [E, I, D] (a dense layer: [1, I, D])
    up_proj: Weight  # [E, I, D]
    down_proj: Weight  # [E, D, I]
    router: np.ndarray | None = None  # [E, D] f32; None in a dense layer


def layer_weights(cfg: Qwen3MoeConfig, weights: Mapping[str, Weight], layer: int) -> LayerWeights:
    """The weights of one layer, by the inventory's field names: norms and the router as float32
    arrays, matrices as Weights (a dense MLP's as a stack of one expert)."""
    fields = {}
    for spec in layer_tensor_specs(cfg, layer):
        w = weights[spec.name]
        fields[spec.field] = w.data if spec.role in ("norm", "router") else \
            w.stacked() if spec.role == "mlp" else w
    return LayerWeights(**fields)


def linear(x: np.ndarray, w: Weight, out: np.ndarray, threads: int) -> None:
    """out = x @ w.T, whatever the storage type of w."""
    K.matmul(x, w.data, out, threads=threads, storage=w.storage)


def rope_tables(cfg: Qwen3MoeConfig, ctx: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [C, hd/2] of the rotary angles, computed in float32 as transformers does."""
    hd = cfg.head_dim
    inv_freq = (1.0 / (np.float32(cfg.rope_theta) ** (np.arange(0, hd, 2, dtype=np.int64)
                                                       .astype(np.float32) / np.float32(hd)))).astype(np.float32)
    angles = np.arange(ctx, dtype=np.float32)[:, None] * inv_freq[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


class Buffers:
    """The activations of one step of up to `rows` tokens (what a load commits whatever its ctx)."""

    def __init__(self, cfg: Qwen3MoeConfig, rows: int):
        D, hd = cfg.hidden_size, cfg.head_dim
        q_width, kv_width = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
        I = max(cfg.moe_intermediate_size, cfg.intermediate_size)
        k = max(cfg.num_experts_per_tok, 1)
        f32 = np.float32
        self.x = np.zeros((rows, D), f32)  # the residual stream
        self.h = np.zeros((rows, D), f32)  # normed input of a block
        self.q = np.zeros((rows, q_width), f32)
        self.k = np.zeros((rows, kv_width), f32)
        self.v = np.zeros((rows, kv_width), f32)
        self.attn = np.zeros((rows, q_width), f32)
        self.out = np.zeros((rows, D), f32)  # a block's output, before the residual add
        self.router_logits = np.zeros((rows, max(cfg.num_experts, 1)), f32)
        self.expert_ids = np.zeros((rows, k), np.int32)
        self.expert_weights = np.zeros((rows, k), f32)
        self.dense_ids = np.zeros((rows, 1), np.int32)  # a dense MLP: expert 0, weight 1
        self.dense_weights = np.ones((rows, 1), f32)
        self.moe_scratch = np.zeros(K.moe_scratch_floats(rows, k, D, I), f32)
        self.token = np.zeros(1, np.int32)
        self.logits = np.zeros((1, cfg.vocab_size), f32)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in vars(self).values())


class KVCache:
    """Keys and values of `slots` sequences of up to `ctx` positions each, stored as `kv_cache`
    ("f16" or "f32"): k[layer, slot] and v[layer, slot] are [Hkv, ctx, hd], head-major."""

    def __init__(self, cfg: Qwen3MoeConfig, slots: int, ctx: int, kv_cache: str):
        shape = (cfg.num_hidden_layers, slots, cfg.num_key_value_heads, ctx, cfg.head_dim)
        self.ctx, self.kv_cache = ctx, kv_cache
        # Written through now, so its memory is committed at load (what memory.check_memory
        # budgeted) and resident memory stays flat while generating.
        self.k = np.empty(shape, KV_CACHE_DTYPES[kv_cache])
        self.v = np.empty(shape, KV_CACHE_DTYPES[kv_cache])
        self.k.fill(0)
        self.v.fill(0)
        self.positions = np.arange(ctx, dtype=np.int32)


class Transformer:
    """The network: weights (views of the mapped file), buffers, and the forward pass."""

    def __init__(self, cfg: Qwen3MoeConfig, weights: Mapping[str, Weight], buffers: Buffers, cache: KVCache,
                 threads: int):
        """`weights`: every tensor of config.tensor_specs(cfg) by name, as stored (checked by the
        loader); `buffers`: the activations of PREFILL_CHUNK rows; `cache`: the KV cache."""
        self.cfg = cfg
        self.ctx = cache.ctx
        self.threads = threads
        self.embed_tokens = weights["model.embed_tokens.weight"]  # [V, D]
        self.layers = [layer_weights(cfg, weights, i) for i in range(cfg.num_hidden_layers)]
        self.norm = weights["model.norm.weight"].data  # [D] f32
        self.lm_head = self.embed_tokens if cfg.tie_word_embeddings else weights["lm_head.weight"]  # [V, D]
        self.cos, self.sin = rope_tables(cfg, cache.ctx)
        self.buf = buffers
        self.cache = cache
        self.lock = threading.Lock()

    # -- one step ----------------------------------------------------------------------------

    def forward(self, ids: np.ndarray, start: int, logits_out: np.ndarray, all_positions: bool) -> None:
        """Run tokens `ids` (int32 [T], T <= PREFILL_CHUNK) at cache positions start..start+T-1.
        Writes the logits of every position ([T, V]) or of the last one ([1, V]) to `logits_out`."""
        T, b, n = len(ids), self.buf, self.threads
        x = b.x[:T]
        e = self.embed_tokens
        K.embedding(e.data, ids, x, threads=n, storage=e.storage)
        for layer, w in enumerate(self.layers):
            self.attention_block(layer, w, x, start)
            self.mlp_block(w, x)
        rows = x if all_positions else x[T - 1:]
        K.rmsnorm(rows, self.norm, self.cfg.rms_norm_eps, rows, threads=n)
        linear(rows, self.lm_head, logits_out, n)

    def attention_block(self, layer: int, w: LayerWeights, x: np.ndarray, start: int) -> None:
        """x += o_proj(attention(q, k, v)) with q, k, v from input_layernorm(x)."""
        cfg, b, n = self.cfg, self.buf, self.threads
        T, hd, eps = len(x), cfg.head_dim, cfg.rms_norm_eps
        Hq, Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
        h, q, k, v, attn, out = b.h[:T], b.q[:T], b.k[:T], b.v[:T], b.attn[:T], b.out[:T]
        K.rmsnorm(x, w.input_layernorm, eps, h, threads=n)
        linear(h, w.q_proj, q, n)
        linear(h, w.k_proj, k, n)
        linear(h, w.v_proj, v, n)
        # per-head RMSNorm of q and k, then rotary position embedding
        q_heads, k_heads = q.reshape(T * Hq, hd), k.reshape(T * Hkv, hd)
        K.rmsnorm(q_heads, w.q_norm, eps, q_heads, threads=n)
        K.rmsnorm(k_heads, w.k_norm, eps, k_heads, threads=n)
        positions = self.cache.positions[start:start + T]
        K.rope(q.reshape(T, Hq, hd), positions, self.cos, self.sin, threads=n)
        K.rope(k.reshape(T, Hkv, hd), positions, self.cos, self.sin, threads=n)
        # append to this layer's cache (head-major: [Hkv, C, hd]; f16 rounds to nearest) and attend
        k_cache, v_cache = self.cache.k[layer, 0], self.cache.v[layer, 0]
        k_cache[:, start:start + T] = k.reshape(T, Hkv, hd).transpose(1, 0, 2)
        v_cache[:, start:start + T] = v.reshape(T, Hkv, hd).transpose(1, 0, 2)
        K.attention(q.reshape(T, Hq, hd), k_cache, v_cache, start, attn.reshape(T, Hq, hd), threads=n)
        linear(attn, w.o_proj, out, n)
        x += out

    def mlp_block(self, w: LayerWeights, x: np.ndarray) -> None:
        """x += sum over the chosen experts of weight * SwiGLU_expert(post_attention_layernorm(x))."""
        cfg, b, n = self.cfg, self.buf, self.threads
        T = len(x)
        h, out = b.h[:T], b.out[:T]
        K.rmsnorm(x, w.post_attention_layernorm, cfg.rms_norm_eps, h, threads=n)
        if w.router is not None:
            # softmax over all experts, keep the top k, renormalise when norm_topk_prob
            ids, weights = b.expert_ids[:T], b.expert_weights[:T]
            K.matmul(h, w.router, b.router_logits[:T], threads=n)
            K.router_topk(b.router_logits[:T], cfg.num_experts_per_tok, cfg.norm_topk_prob, ids, weights, threads=n)
        else:
            ids, weights = b.dense_ids[:T], b.dense_weights[:T]
        K.moe_ffn(h, w.gate_proj.data, w.up_proj.data, w.down_proj.data, ids, weights, b.moe_scratch, out,
                  threads=n, storage=w.gate_proj.storage, down_storage=w.down_proj.storage)
        x += out
