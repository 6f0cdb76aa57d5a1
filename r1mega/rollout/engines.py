"""Pick the rollout engine a `RolloutConfig` asks for."""

from __future__ import annotations

from typing import Optional

from r1mega.rollout.config import RolloutConfig
from r1mega.rollout.types import RolloutEngine


def make_engine(
    cfg: RolloutConfig,
    model,
    *,
    tokenizer=None,
    seed: int = 0,
    eos_token_ids: Optional[list[int]] = None,
) -> RolloutEngine:
    """The engine for `cfg.engine`, serving `model` (a transformers config or a local HF checkpoint dir)."""
    if cfg.engine == "builtin":
        from r1mega.rollout.builtin import BuiltinEngine

        return BuiltinEngine.from_config(cfg, model, tokenizer=tokenizer, seed=seed, eos_token_ids=eos_token_ids)
    if cfg.engine == "sglang":
        raise ValueError(
            "rollout.engine: 'sglang' is not available in this version of r1mega (there is no SGLang "
            "engine yet); use rollout.engine=builtin"
        )
    raise ValueError(f"rollout.engine: unknown engine {cfg.engine!r}")  # the config's Literal should prevent this
