"""Qwen3-MoE: the Qwen3 decoder with a softmax top-k routed MoE (no shared expert) in every layer."""

from __future__ import annotations

from typing import Any

from r1mega.models.common import dense_kwargs, moe_kwargs
from r1mega.models.config import ModelConfig

FAMILY = "qwen3_moe"


def transformer_config_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    assert cfg.family == FAMILY and cfg.moe_router_score_function == "softmax"
    # HF Qwen3MoeSparseMoeBlock: router logits in the model dtype, softmax in float32 (megatron's
    # router always softmaxes in float32), top-k, renormalise when norm_topk_prob
    return {**dense_kwargs(cfg), **moe_kwargs(cfg)}


def rope_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    return dict(rotary_base=cfg.rope_theta, rope_scaling=False)
