"""Pieces shared by the family maps: the rules every decoder has, and HF config.json helpers.

A family module (r1mega/convert/<family>.py) composes these into `weight_rules(cfg)` and the two
config translations `model_kwargs_from_hf(hf)` / `hf_kwargs_from_model(cfg)`.
"""

from __future__ import annotations

from typing import Any

from r1mega.convert.rules import Rule, layer_rule, rule
from r1mega.models.config import ModelConfig

# ------------------------------------------------------------------------------------------------
# weight rules
# ------------------------------------------------------------------------------------------------


def embedding_rules(cfg: ModelConfig) -> list[Rule]:
    """Word embedding, final norm and output layer (vocabulary rows padded on the megatron side).

    Tied embeddings: HF stores only model.embed_tokens.weight; megatron has no output weight at
    PP=1 and a copy of the embedding on the last stage at PP>1, loaded from the same HF tensor and
    never exported.
    """
    out = [
        rule("embedding.word_embeddings.weight", "model.embed_tokens.weight", "vocab"),
        rule("decoder.final_layernorm.weight", "model.norm.weight"),
    ]
    if cfg.head == "score":
        # a reward model: the scalar head (r1mega/models/score_head.py), HF's `score` linear layer
        out.append(rule("output_layer.weight", "score.weight"))
    elif cfg.tie_word_embeddings:
        out.append(rule("output_layer.weight", "model.embed_tokens.weight", "vocab", export=False))
    else:
        out.append(rule("output_layer.weight", "lm_head.weight", "vocab"))
    return out


def input_norm_rule() -> Rule:
    # local spec: a separate norm; TE spec: fused into linear_qkv as its layer_norm_weight
    return layer_rule(["input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight"], "input_layernorm.weight")


def gqa_attention_rules(cfg: ModelConfig) -> list[Rule]:
    """Fused QKV (GQA-grouped) + output projection; QKV bias (Qwen2) and per-head q/k norm (Qwen3)."""
    out = [
        input_norm_rule(),
        layer_rule(
            "self_attention.linear_qkv.weight",
            ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"],
            "qkv",
        ),
        layer_rule("self_attention.linear_proj.weight", "self_attn.o_proj.weight"),
    ]
    if cfg.add_qkv_bias:
        out.append(
            layer_rule(
                "self_attention.linear_qkv.bias",
                ["self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"],
                "qkv",
            )
        )
    if cfg.qk_layernorm:
        out += [
            layer_rule("self_attention.q_layernorm.weight", "self_attn.q_norm.weight"),
            layer_rule("self_attention.k_layernorm.weight", "self_attn.k_norm.weight"),
        ]
    return out


def pre_mlp_norm_rule() -> Rule:
    # local spec and MoE layers: a separate norm; TE dense layers: fused into linear_fc1
    return layer_rule(
        ["pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight"], "post_attention_layernorm.weight"
    )


def dense_mlp_rules() -> list[Rule]:
    """SwiGLU MLP: fc1 = [gate; up], fc2 = down."""
    return [
        layer_rule("mlp.linear_fc1.weight", ["mlp.gate_proj.weight", "mlp.up_proj.weight"], "gate_up"),
        layer_rule("mlp.linear_fc2.weight", "mlp.down_proj.weight"),
    ]


def moe_rules(cfg: ModelConfig) -> list[Rule]:
    """Router, routed experts (SequentialMLP or TEGroupedMLP spelling) and the shared expert."""
    expert = "mlp.experts.{expert}."
    out = [
        layer_rule("mlp.router.weight", "mlp.gate.weight"),
        layer_rule(
            ["mlp.experts.local_experts.{expert}.linear_fc1.weight", "mlp.experts.linear_fc1.weight{expert}"],
            [expert + "gate_proj.weight", expert + "up_proj.weight"],
            "gate_up",
        ),
        layer_rule(
            ["mlp.experts.local_experts.{expert}.linear_fc2.weight", "mlp.experts.linear_fc2.weight{expert}"],
            expert + "down_proj.weight",
        ),
    ]
    if cfg.moe_router_enable_expert_bias:
        # a buffer on the megatron side (aux-loss-free balancing), a persistent buffer in HF
        out.append(layer_rule("mlp.router.expert_bias", "mlp.gate.e_score_correction_bias"))
    if cfg.moe_shared_expert_intermediate_size:
        out += [
            layer_rule(
                "mlp.shared_experts.linear_fc1.weight",
                ["mlp.shared_experts.gate_proj.weight", "mlp.shared_experts.up_proj.weight"],
                "gate_up",
            ),
            layer_rule("mlp.shared_experts.linear_fc2.weight", "mlp.shared_experts.down_proj.weight"),
        ]
    return out


# ------------------------------------------------------------------------------------------------
# HF config.json helpers
# ------------------------------------------------------------------------------------------------


def require(hf: Any, field: str, allowed: tuple, why: str) -> None:
    """Refuse an HF config whose `field` has a value megatron (or this map) cannot reproduce."""
    value = getattr(hf, field, None)
    if value not in allowed:
        raise ValueError(f"config.json {field}={value!r} is not supported: {why}")


def rope_from_hf(hf: Any) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling or None) from transformers' rope_parameters (v5) or the legacy keys."""
    params = dict(getattr(hf, "rope_parameters", None) or {})
    if not params and getattr(hf, "rope_scaling", None):
        params = dict(hf.rope_scaling)
    theta = params.pop("rope_theta", getattr(hf, "rope_theta", None))
    if theta is None:
        raise ValueError("config.json: no rope_theta (in rope_parameters or at top level)")
    kind = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    if kind == "default":
        return float(theta), None
    return float(theta), {"rope_type": kind, **params}


def rope_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """ModelConfig rope fields -> transformers 5 rope_parameters."""
    params: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling_type is not None:
        scaling = {k: v for k, v in cfg.rope_scaling.items() if k not in ("type", "rope_type")}
        params = {"rope_type": cfg.rope_scaling_type, "rope_theta": cfg.rope_theta, **scaling}
    return params


def decoder_from_hf(hf: Any) -> dict[str, Any]:
    """ModelConfig kwargs every family reads the same way from an HF config."""
    require(hf, "hidden_act", ("silu",), "r1mega's models use SwiGLU (silu)")
    heads = int(hf.num_attention_heads)
    kv_heads = getattr(hf, "num_key_value_heads", None)
    head_dim = getattr(hf, "head_dim", None)
    theta, scaling = rope_from_hf(hf)
    return dict(
        num_layers=int(hf.num_hidden_layers),
        hidden_size=int(hf.hidden_size),
        ffn_hidden_size=int(hf.intermediate_size),
        num_attention_heads=heads,
        num_query_groups=None if kv_heads in (None, heads) else int(kv_heads),
        kv_channels=None if head_dim in (None, hf.hidden_size // heads) else int(head_dim),
        vocab_size=int(hf.vocab_size),
        max_position_embeddings=int(hf.max_position_embeddings),
        rope_theta=theta,
        rope_scaling=scaling,
        norm_epsilon=float(hf.rms_norm_eps),
        tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
        init_method_std=float(getattr(hf, "initializer_range", 0.02)),
        attention_dropout=float(getattr(hf, "attention_dropout", 0.0) or 0.0),
    )


def decoder_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """HF config kwargs every family writes the same way."""
    return dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.ffn_hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_query_groups or cfg.num_attention_heads,
        head_dim=cfg.head_dim,
        hidden_act="silu",
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.norm_epsilon,
        tie_word_embeddings=cfg.tie_word_embeddings,
        initializer_range=cfg.init_method_std,
        attention_dropout=cfg.attention_dropout,
        rope_parameters=rope_to_hf(cfg),
    )


def refuse_sliding_window(hf: Any) -> None:
    """Qwen2/3 sliding-window attention has no megatron counterpart here."""
    if getattr(hf, "use_sliding_window", False):
        raise ValueError("config.json use_sliding_window=true is not supported: megatron attention here is full causal")
    kinds = set(getattr(hf, "layer_types", None) or ["full_attention"])
    if kinds != {"full_attention"}:
        raise ValueError(f"config.json layer_types {sorted(kinds)} is not supported: only full_attention layers")
