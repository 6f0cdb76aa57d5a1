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
        # SGLangEngine (r1mega/rollout/sglang_engine.py) exists and is contract-tested, but the RL
        # trainer does not launch it on its rollout groups yet (docs/rollout.md says what is missing)
        raise ValueError(
            "rollout.engine: 'sglang' is not wired into the RL trainer yet (SGLangEngine exists, its "
            "launch on every rollout group does not); use rollout.engine=builtin"
        )
    raise ValueError(f"rollout.engine: unknown engine {cfg.engine!r}")  # the config's Literal should prevent this
