"""TransformerConfig kwargs shared by every family: a pre-norm decoder with RMSNorm, SwiGLU and RoPE.

Each kwarg reproduces one HF behaviour (docs/models.md has the table). These describe the
architecture only: parallelism, dtype and fusions are the builder's business
(r1mega/models/builder.py).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F

from r1mega.models.config import ModelConfig


def dense_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """Decoder-wide options common to Llama, Qwen2/2.5, Qwen3 and DeepSeek-V3."""
    return dict(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        ffn_hidden_size=cfg.ffn_hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_query_groups=cfg.num_query_groups or cfg.num_attention_heads,
        kv_channels=cfg.head_dim,
        # HF LlamaRMSNorm / Qwen2RMSNorm: x * rsqrt(mean(x^2) + eps) * weight
        normalization="RMSNorm",
        layernorm_epsilon=cfg.norm_epsilon,
        # HF act_fn(gate_proj(x)) * up_proj(x) with silu: megatron's fc1 holds [gate; up]
        gated_linear_unit=True,
        activation_func=F.silu,
        # no bias on any linear (HF: mlp bias=False, o_proj bias=False) ...
        add_bias_linear=False,
        # ... except q/k/v where the family has one (Qwen2/2.5)
        add_qkv_bias=cfg.add_qkv_bias,
        qk_layernorm=cfg.qk_layernorm,
        hidden_dropout=cfg.hidden_dropout,
        attention_dropout=cfg.attention_dropout,
        init_method_std=cfg.init_method_std,
        # HF applies rotate-half RoPE to q/k halves, not interleaved pairs
        rotary_interleaved=False,
        # HF computes the attention softmax in float32
        attention_softmax_in_fp32=True,
        apply_query_key_layer_scaling=False,
    )


def moe_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """Mixture-of-experts options (Qwen3-MoE, DeepSeek-V3); empty for dense models."""
    if not cfg.is_moe:
        return {}
    k = cfg.moe_first_k_dense
    softmax = cfg.moe_router_score_function == "softmax"
    return dict(
        num_moe_experts=cfg.num_experts,
        moe_ffn_hidden_size=cfg.moe_ffn_hidden_size,
        # HF first_k_dense_replace: layers [0, k) dense, the rest MoE
        moe_layer_freq=[0] * k + [1] * (cfg.num_layers - k),
        moe_router_topk=cfg.moe_router_topk,
        moe_router_score_function=cfg.moe_router_score_function,
        # softmax + norm_topk_prob == softmax over the selected k logits (megatron's default);
        # softmax without renormalising == softmax over all experts, then top-k (pre_softmax)
        moe_router_pre_softmax=softmax and not cfg.moe_norm_topk_prob,
        moe_router_topk_scaling_factor=cfg.moe_router_topk_scaling_factor,
        moe_router_enable_expert_bias=cfg.moe_router_enable_expert_bias,
        moe_router_bias_update_rate=cfg.moe_router_bias_update_rate,
        moe_router_num_groups=cfg.moe_router_num_groups,
        moe_router_group_topk=cfg.moe_router_group_topk,
        moe_shared_expert_intermediate_size=cfg.moe_shared_expert_intermediate_size,
        moe_shared_expert_overlap=False,
        moe_aux_loss_coeff=cfg.moe_aux_loss_coeff,
        moe_router_load_balancing_type="aux_loss" if cfg.moe_aux_loss_coeff > 0 else "none",
        moe_token_dispatcher_type=cfg.moe_token_dispatcher_type,
        # no token dropping: HF routes every token to its top-k experts
        moe_expert_capacity_factor=None,
    )
