"""The Qwen3-MoE network, as transformers' `Qwen3MoeForCausalLM` computes it, on C kernels.

Shapes: T rows in this step, D hidden, Hq / Hkv query / key-value heads of width hd,
E experts of which k are active, I expert (or dense MLP) width, V vocabulary, C context.

    x = embed_tokens[tokens]                                       [T, D]
    for each layer:
        x = x + o_proj(attention(rope(q_norm(q)), rope(k_norm(k)), v))   over the KV cache
        x = x + moe(post_attention_layernorm(x))     (dense SwiGLU MLP in mlp-only layers)
    logits = lm_head(norm(x))                                      [T, V]

One step of that runs in C, block by block (`_kernels/forward.c`, which reads as the above),
in one call and one parallel region; this module gathers what it reads: the weights by the
inventory's names (config.layer_tensor_specs), the rotary tables, the activation buffers and
the KV cache.  A step's rows may belong to different sequences: row t is token tokens[t] of the
sequence in cache slot slots[t] at position positions[t].  A prompt goes through in chunks of
up to `PREFILL_CHUNK` rows; decoding feeds one row per sequence.  Every buffer is allocated
once, at load: a step allocates nothing.  The KV cache holds keys and values in f16 (half the
bytes a long context reads per decoded token, and half the memory) or, on request, float32
(the exact path the tests hold to transformers).  Under expert parallelism (moecc.parallel) a
Transformer computes only its shard's experts, and each sparse layer's partial outputs are
summed over the ranks inside the step.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from . import _kernels as K
from .config import Qwen3MoeConfig, layer_tensor_specs
from .parallel import ExpertShard

PREFILL_CHUNK = 256
KV_CACHE_DTYPES = {"f16": np.float16, "f32": np.float32}
BLOCKS = K.BLOCKS  # where a profiled step's time goes (forward.c)


class Weight(NamedTuple):
    """A tensor as stored: the mapped data and its storage type (moecc.storage)."""
    data: np.ndarray  # f32, bf16 bits (uint16), f16, or quantized bytes (uint8 [..., rows, row_bytes])
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


def rope_tables(cfg: Qwen3MoeConfig, ctx: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [C, hd/2] of the rotary angles, computed in float32 as transformers does."""
    hd = cfg.head_dim
    inv_freq = (1.0 / (np.float32(cfg.rope_theta) ** (np.arange(0, hd, 2, dtype=np.int64)
                                                       .astype(np.float32) / np.float32(hd)))).astype(np.float32)
    angles = np.arange(ctx, dtype=np.float32)[:, None] * inv_freq[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


class Buffers:
    """The activations of one step of up to `rows` rows (what a load commits whatever its ctx)."""

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
        self.moe_sums = np.zeros((rows, D), np.float64)  # the experts' output, summed in double (moe.c)
        self.router_logits = np.zeros((rows, max(cfg.num_experts, 1)), f32)
        self.expert_ids = np.zeros((rows, k), np.int32)
        self.expert_weights = np.zeros((rows, k), f32)
        self.dense_ids = np.zeros(rows, np.int32)  # a dense MLP: expert 0, weight 1
        self.dense_weights = np.ones(rows, f32)
        self.xq = np.zeros(rows * K.xq_bytes(max(D, q_width)), np.uint8)  # quantized activation rows
        self.moe_scratch = np.zeros(K.moe_scratch_floats(rows, k, D, I), f32)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in vars(self).values())


class KVCache:
    """Keys and values of `slots` sequences of up to `ctx` positions each, stored as `kv_cache`
    ("f16" or "f32"): k[layer, slot] and v[layer, slot] are [Hkv, ctx, hd], head-major."""

    def __init__(self, cfg: Qwen3MoeConfig, slots: int, ctx: int, kv_cache: str):
        shape = (cfg.num_hidden_layers, slots, cfg.num_key_value_heads, ctx, cfg.head_dim)
        self.slots, self.ctx, self.kv_cache = slots, ctx, kv_cache
        # Written through now, so its memory is committed at load (what memory.check_memory
        # budgeted) and resident memory stays flat while generating.
        self.k = np.empty(shape, KV_CACHE_DTYPES[kv_cache])
        self.v = np.empty(shape, KV_CACHE_DTYPES[kv_cache])
        self.k.fill(0)
        self.v.fill(0)


class Transformer:
    """The network: weights (views of the mapped file), buffers, the KV cache, and the step."""

    def __init__(self, cfg: Qwen3MoeConfig, weights: Mapping[str, Weight], buffers: Buffers, cache: KVCache,
                 threads: int, shard: ExpertShard | None = None):
        """`weights`: every tensor of config.tensor_specs(cfg) by name, as stored (checked by the
        loader); `buffers`: the activations of a step's rows; `cache`: the KV cache; `shard`:
        this rank's experts and communicator (None: one process, every expert)."""
        self.cfg = cfg
        self.shard = shard
        self.ctx = cache.ctx
        self.threads = threads
        self.buf = buffers
        self.cache = cache
        self.layers = [layer_weights(cfg, weights, i) for i in range(cfg.num_hidden_layers)]
        embed_tokens = weights["model.embed_tokens.weight"]  # [V, D]
        cos, sin = rope_tables(cfg, cache.ctx)
        self.step = K.Forward(
            layers=self.layers, embed_tokens=embed_tokens, norm=weights["model.norm.weight"].data,
            lm_head=embed_tokens if cfg.tie_word_embeddings else weights["lm_head.weight"],
            cos=cos, sin=sin, k_cache=cache.k, v_cache=cache.v, buffers=buffers,
            heads=cfg.num_attention_heads, kv_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim,
            top_k=cfg.num_experts_per_tok, norm_topk_prob=cfg.norm_topk_prob, eps=cfg.rms_norm_eps,
            experts=shard.experts if shard else None, reduce=shard.sum_over_ranks if shard else None)
        self.profile: np.ndarray | None = None  # seconds per block (BLOCKS) when profiling
        self.lock = threading.Lock()

    @property
    def rows(self) -> int:
        """The most rows one step takes."""
        return len(self.buf.x)

    def forward(self, tokens: np.ndarray, slots: np.ndarray, positions: np.ndarray, logit_rows: np.ndarray,
                logits: np.ndarray, statistics: K.Statistics | None = None) -> None:
        """Run rows t < T (int32 [T] each): token tokens[t] of the sequence in cache slot
        slots[t] at position positions[t]; the logits of rows logit_rows (int32 [n]) go to
        logits [n, V].  The cache must hold each row's sequence up to its position.  With
        `statistics` (K.Statistics(self.step)), the step adds every matrix's squared inputs to
        it (moecc.imatrix)."""
        self.step(tokens, slots, positions, logit_rows, logits, threads=self.threads, seconds=self.profile,
                  statistics=statistics)
