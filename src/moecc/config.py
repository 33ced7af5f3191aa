"""The model configuration: Hugging Face `config.json` of a `qwen3_moe` model, read and checked.

Field names are the Hugging Face key names verbatim, so a reader can match them with the
checkpoint.  Both spellings seen in the wild are accepted (`rope_theta` top-level or inside
`rope_parameters`; `num_experts` or `num_local_experts`; `torch_dtype` or `dtype`).  What the
engine does not support is refused here, once, with a message that names the key.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field


MAX_DIMENSION = 1 << 24  # far above any real width, head count or vocabulary; catches damaged values
MAX_LAYERS = 1024


class ConfigError(ValueError):
    """The configuration describes a model this engine does not run."""


@dataclass(frozen=True)
class Qwen3MoeConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int  # width of the dense SwiGLU MLP (mlp_only_layers / decoder_sparse_step)
    moe_intermediate_size: int  # width of one expert
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    num_experts: int
    num_experts_per_tok: int
    norm_topk_prob: bool = True
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple[int, ...] = ()
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    max_position_embeddings: int = 40960
    tie_word_embeddings: bool = False
    torch_dtype: str = "bfloat16"
    bos_token_id: int | None = None
    eos_token_id: tuple[int, ...] = field(default_factory=tuple)

    def is_sparse_layer(self, layer: int) -> bool:
        """Whether `layer` runs the experts (else a dense SwiGLU MLP), as transformers decides."""
        return (layer not in self.mlp_only_layers and self.num_experts > 0
                and (layer + 1) % self.decoder_sparse_step == 0)

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, raw: dict) -> "Qwen3MoeConfig":
        """Read a Hugging Face config.json dict (either spelling) or our own `to_dict` output."""
        model_type = raw.get("model_type", "qwen3_moe")
        if model_type != "qwen3_moe":
            raise ConfigError(f"model_type is {model_type!r}; moecc runs only 'qwen3_moe' "
                              "(Qwen3-30B-A3B, Qwen3-Coder-30B-A3B, Qwen3-235B-A22B, ...)")

        def need(key: str, *aliases: str):
            for k in (key, *aliases):
                if raw.get(k) is not None:
                    return raw[k]
            raise ConfigError(f"config.json has no {key!r}" +
                              (f" (nor {', '.join(map(repr, aliases))})" if aliases else ""))

        try:
            _refuse_unsupported(raw)
            cfg = cls._parse(raw, need)
        except (TypeError, ValueError, OverflowError, AttributeError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"config.json has a value of the wrong type or range: {e}") from None
        cfg._check()
        return cfg

    @classmethod
    def _parse(cls, raw: dict, need) -> "Qwen3MoeConfig":
        hidden = int(need("hidden_size"))
        heads = int(need("num_attention_heads"))
        rope = raw.get("rope_parameters") or {}
        rope_theta = raw.get("rope_theta", rope.get("rope_theta", 10000.0))
        eos = raw.get("eos_token_id")
        eos = () if eos is None else tuple(int(e) for e in (eos if isinstance(eos, list) else [eos]))
        return cls(
            vocab_size=int(need("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")),
            moe_intermediate_size=int(need("moe_intermediate_size")),
            num_hidden_layers=int(need("num_hidden_layers")),
            num_attention_heads=heads,
            num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw.get("head_dim") or hidden // heads),
            num_experts=int(need("num_experts", "num_local_experts")),
            num_experts_per_tok=int(need("num_experts_per_tok")),
            norm_topk_prob=bool(raw.get("norm_topk_prob", False)),
            decoder_sparse_step=int(raw.get("decoder_sparse_step", 1)),
            mlp_only_layers=tuple(int(i) for i in (raw.get("mlp_only_layers") or ())),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope_theta),
            max_position_embeddings=int(raw.get("max_position_embeddings", 40960)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            torch_dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "bfloat16"),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_id=eos,
        )

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "Qwen3MoeConfig":
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} does not hold a JSON object")
        return cls.from_dict(raw)

    def _check(self) -> None:
        positive = ("vocab_size", "hidden_size", "moe_intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "num_key_value_heads", "head_dim", "decoder_sparse_step")
        for name in positive:
            if not 0 < getattr(self, name) < MAX_DIMENSION:
                raise ConfigError(f"config {name} = {getattr(self, name)} must be positive and below {MAX_DIMENSION}")
        if not 0 <= self.num_experts < MAX_DIMENSION or self.num_hidden_layers > MAX_LAYERS:
            raise ConfigError(f"config num_experts = {self.num_experts} / num_hidden_layers = "
                              f"{self.num_hidden_layers} is out of range")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"num_attention_heads ({self.num_attention_heads}) is not a multiple "
                              f"of num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim {self.head_dim} must be even for rotary embeddings")
        if not 0 < self.num_experts_per_tok <= self.num_experts:
            raise ConfigError(f"num_experts_per_tok ({self.num_experts_per_tok}) must be in "
                              f"1..num_experts ({self.num_experts})")
        if any(not self.is_sparse_layer(i) for i in range(self.num_hidden_layers)) \
                and self.intermediate_size <= 0:
            raise ConfigError("a dense layer exists but intermediate_size is not positive")
        bad = [i for i in self.mlp_only_layers if not 0 <= i < self.num_hidden_layers]
        if bad:
            raise ConfigError(f"mlp_only_layers names layers {bad} outside 0..{self.num_hidden_layers - 1}")


def _refuse_unsupported(raw: dict) -> None:
    scaling = raw.get("rope_scaling")
    rope_params = raw.get("rope_parameters") or {}
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type")) if scaling else \
        rope_params.get("rope_type", "default")
    if rope_type not in (None, "default"):
        raise ConfigError(f"rope_scaling / rope_parameters type {rope_type!r} is not supported yet; "
                          "moecc runs default RoPE (remove the scaling to run at the native context)")
    if raw.get("use_sliding_window"):
        raise ConfigError("use_sliding_window: true is not supported; moecc runs full attention "
                          "(Qwen3-MoE checkpoints ship with it false)")
    if raw.get("attention_bias"):
        raise ConfigError("attention_bias: true is not supported (Qwen3-MoE has no attention biases)")
    act = raw.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"hidden_act {act!r} is not supported; Qwen3-MoE uses 'silu'")
    factor = raw.get("partial_rotary_factor", rope_params.get("partial_rotary_factor", 1.0))
    if factor not in (None, 1, 1.0):
        raise ConfigError(f"partial_rotary_factor {factor} is not supported (Qwen3-MoE rotates the whole head)")


@dataclass(frozen=True)
class TensorSpec:
    """One weight of the architecture: its name in the checkpoint and .moecc file, its shape,
    its role (embed, attn, norm, router, experts, mlp, lm_head), which decides its storage type,
    and the field of the model that holds it (`model.LayerWeights` for a layer's tensors)."""
    name: str
    shape: tuple[int, ...]
    role: str
    field: str
    layer: int | None = None  # None: not part of a layer


def layer_tensor_specs(cfg: Qwen3MoeConfig, layer: int) -> list[TensorSpec]:
    """The weights of one layer, in file order.  Names are the Hugging Face names, except that a
    sparse layer's experts are stacked: `model.layers.L.mlp.experts.{gate,up,down}_proj` of shape
    [E, rows, cols], one expert after another."""
    D, hd, E = cfg.hidden_size, cfg.head_dim, cfg.num_experts
    q_width, kv_width = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    p = f"model.layers.{layer}."
    specs = [
        (p + "input_layernorm.weight", (D,), "norm", "input_layernorm"),
        (p + "self_attn.q_proj.weight", (q_width, D), "attn", "q_proj"),
        (p + "self_attn.k_proj.weight", (kv_width, D), "attn", "k_proj"),
        (p + "self_attn.v_proj.weight", (kv_width, D), "attn", "v_proj"),
        (p + "self_attn.o_proj.weight", (D, q_width), "attn", "o_proj"),
        (p + "self_attn.q_norm.weight", (hd,), "norm", "q_norm"),
        (p + "self_attn.k_norm.weight", (hd,), "norm", "k_norm"),
        (p + "post_attention_layernorm.weight", (D,), "norm", "post_attention_layernorm"),
    ]
    if cfg.is_sparse_layer(layer):
        I = cfg.moe_intermediate_size
        specs += [
            (p + "mlp.gate.weight", (E, D), "router", "router"),
            (p + "mlp.experts.gate_proj", (E, I, D), "experts", "gate_proj"),
            (p + "mlp.experts.up_proj", (E, I, D), "experts", "up_proj"),
            (p + "mlp.experts.down_proj", (E, D, I), "experts", "down_proj"),
        ]
    else:
        I = cfg.intermediate_size
        specs += [
            (p + "mlp.gate_proj.weight", (I, D), "mlp", "gate_proj"),
            (p + "mlp.up_proj.weight", (I, D), "mlp", "up_proj"),
            (p + "mlp.down_proj.weight", (D, I), "mlp", "down_proj"),
        ]
    return [TensorSpec(name, shape, role, field, layer) for name, shape, role, field in specs]


def tensor_specs(cfg: Qwen3MoeConfig) -> list[TensorSpec]:
    """Every weight the model has, in file order: the embedding, each layer's tensors, the final
    norm and (unless tied to the embedding) the lm_head."""
    D, V = cfg.hidden_size, cfg.vocab_size
    specs = [TensorSpec("model.embed_tokens.weight", (V, D), "embed", "embed_tokens")]
    for layer in range(cfg.num_hidden_layers):
        specs += layer_tensor_specs(cfg, layer)
    specs.append(TensorSpec("model.norm.weight", (D,), "norm", "norm"))
    if not cfg.tie_word_embeddings:
        specs.append(TensorSpec("lm_head.weight", (V, D), "lm_head", "lm_head"))
    return specs
