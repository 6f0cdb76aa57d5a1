"""DeepSeek-V3: multi-latent attention with YaRN RoPE, first-k dense layers, then MoE layers with a
shared expert and a sigmoid router (expert-score correction bias, group-limited top-k, scaled weights).
"""

from __future__ import annotations

from typing import Any

from r1mega.models.common import dense_kwargs, moe_kwargs
from r1mega.models.config import ModelConfig

FAMILY = "deepseek_v3"


def transformer_config_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """MLATransformerConfig kwargs."""
    assert cfg.family == FAMILY and cfg.multi_latent_attention
    kwargs = {**dense_kwargs(cfg), **moe_kwargs(cfg)}
    kwargs.update(
        multi_latent_attention=True,
        q_lora_rank=cfg.q_lora_rank,  # None: full-rank q projection (V2-Lite style)
        kv_lora_rank=cfg.kv_lora_rank,
        qk_head_dim=cfg.qk_head_dim,  # HF qk_nope_head_dim
        qk_pos_emb_head_dim=cfg.qk_pos_emb_head_dim,  # HF qk_rope_head_dim
        v_head_dim=cfg.v_head_dim,
        # qk_layernorm switches on the latent norms (HF q_a_layernorm / kv_a_layernorm)
        qk_layernorm=True,
        # megatron's MLA de-interleaves the rope half before rotate-half, as HF's
        # apply_rotary_pos_emb_interleave does (config.rope_interleave=True)
        rotary_base=cfg.rope_theta,
        # HF DeepseekV3TopkRouter computes logits in float32
        moe_router_dtype="fp32",
        # HF shared_experts output is added without a gate
        moe_shared_expert_gate=False,
        kv_channels=cfg.v_head_dim,  # as megatron-LM configures MLA; MLA sizes its own heads
    )
    if cfg.moe_aux_loss_coeff > 0:
        kwargs["moe_router_load_balancing_type"] = "seq_aux_loss"  # DeepSeek-V3's sequence-wise loss
    kwargs.update(_yarn_kwargs(cfg))
    return kwargs


def _yarn_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """HF rope_scaling (type yarn) -> megatron's YaRN: same inverse-frequency blend (beta_fast /
    beta_slow correction range), cos/sin scaled by mscale(factor, mscale)/mscale(factor,
    mscale_all_dim) and the softmax scale multiplied by mscale(factor, mscale_all_dim)^2."""
    rs = cfg.rope_scaling
    if cfg.rope_scaling_type != "yarn":
        return dict(rope_type="rope", rotary_scaling_factor=1.0, mscale=1.0, mscale_all_dim=0.0)
    return dict(
        rope_type="yarn",
        rotary_scaling_factor=float(rs["factor"]),
        original_max_position_embeddings=int(rs["original_max_position_embeddings"]),
        beta_fast=float(rs.get("beta_fast", 32)),
        beta_slow=float(rs.get("beta_slow", 1)),
        mscale=float(rs.get("mscale", 1.0)),
        mscale_all_dim=float(rs.get("mscale_all_dim", 0.0)),
    )


def rope_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    # MLA builds its own (YaRN) rotary embedding; GPTModel's is not used
    return dict(rotary_base=cfg.rope_theta, rope_scaling=False)
