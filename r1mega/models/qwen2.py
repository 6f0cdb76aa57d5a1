"""Qwen2 / Qwen2.5: the Llama decoder plus a bias on the q/k/v projections."""

from __future__ import annotations

from typing import Any

from r1mega.models.common import dense_kwargs
from r1mega.models.config import ModelConfig

FAMILY = "qwen2"


def transformer_config_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    assert cfg.family == FAMILY
    kwargs = dense_kwargs(cfg)
    assert kwargs["add_qkv_bias"]  # validated: HF Qwen2Attention always has q/k/v bias
    return kwargs


def rope_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    return dict(rotary_base=cfg.rope_theta, rope_scaling=False)
