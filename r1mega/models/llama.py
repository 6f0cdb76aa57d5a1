"""Llama (2/3/3.1/3.2): RMSNorm pre-norm decoder, SwiGLU, GQA, rotate-half RoPE (llama3 scaling)."""

from __future__ import annotations

from typing import Any

from r1mega.models.common import dense_kwargs
from r1mega.models.config import ModelConfig

FAMILY = "llama"


def transformer_config_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    assert cfg.family == FAMILY
    return dense_kwargs(cfg)


def rope_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """GPTModel RoPE arguments; megatron's llama3 scaling is HF's rope_type=llama3 (Llama 3.1 curve)."""
    out: dict[str, Any] = dict(rotary_base=cfg.rope_theta, rope_scaling=False)
    if cfg.rope_scaling_type == "llama3":
        out.update(rope_scaling=True, rope_scaling_factor=float(cfg.rope_scaling["factor"]))
    return out
