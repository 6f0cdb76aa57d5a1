"""Qwen3 (dense): the Llama decoder plus RMSNorm on each query and key head before RoPE."""

from __future__ import annotations

from typing import Any

from r1mega.models.common import dense_kwargs
from r1mega.models.config import ModelConfig

FAMILY = "qwen3"


def transformer_config_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    assert cfg.family == FAMILY
    # qk_layernorm: megatron's q_layernorm/k_layernorm act on [.., heads, head_dim] like HF's
    # q_norm/k_norm (shared weight of size head_dim); head_dim comes from kv_channels (HF head_dim)
    return dense_kwargs(cfg)


def rope_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    return dict(rotary_base=cfg.rope_theta, rope_scaling=False)
