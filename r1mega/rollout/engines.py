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
        # An SGLang engine starts from an HF directory and spans rollout.tp ranks: the trainer builds
        # it with SGLangEngine.launch on each rollout group's owner (r1mega/training/rl_rollout.py)
        raise ValueError(
            "rollout.engine: 'sglang' engines are started by the RL trainer on every rollout group "
            "(SGLangEngine.launch), not by make_engine; use rollout.engine=builtin here"
        )
    raise ValueError(f"rollout.engine: unknown engine {cfg.engine!r}")  # the config's Literal should prevent this
