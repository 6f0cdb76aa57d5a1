"""The `eval:` config section: how `r1mega eval` samples and what it reports (docs/eval.md).

Defaults follow DeepSeek-R1's evaluation (temperature 0.6, top-p 0.95, pass@1 averaged over k
samples, cons@k) with a small k for the tiny model; the paper used k = 64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from r1mega.configlib import ConfigError

__all__ = ["EvalConfig"]


@dataclass(kw_only=True)
class EvalConfig:
    samples_per_prompt: int = 4
    """k: responses sampled per prompt (the paper: 64). pass@1 is averaged over them, cons@k votes
    over them."""
    temperature: float = 0.6
    """Sampling temperature (the paper's evaluation setting)."""
    top_p: float = 0.95
    """Nucleus mass (the paper's evaluation setting)."""
    max_new_tokens: Optional[int] = None
    """Response length cap; None = rollout.max_new_tokens."""
    pass_k: Optional[list[int]] = None
    """Unbiased pass@j reported for each j here (each 1 <= j <= k); None = [1, k]."""
    target_language: Literal["en", "zh"] = "en"
    """Language of the reasoning that counts as consistent (language_consistency)."""
    seed: int = 0
    """Sampling seed: sample i of a data file is drawn from a stream seeded by (seed, i), so the
    same weights give the same samples whatever engine batch size or checkpoint format."""
    max_prompts: Optional[int] = None
    """At most this many prompts of each data file (the first ones); None = all."""

    def validate(self) -> None:
        if self.samples_per_prompt < 1:
            raise ConfigError(f"samples_per_prompt: must be >= 1, got {self.samples_per_prompt}")
        if not self.temperature >= 0:
            raise ConfigError(f"temperature: must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p: must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens: must be >= 1 (or null), got {self.max_new_tokens}")
        for i, j in enumerate(self.pass_k or []):
            if not 1 <= j <= self.samples_per_prompt:
                raise ConfigError(
                    f"pass_k[{i}]: {j} must be in [1, samples_per_prompt={self.samples_per_prompt}] "
                    "(pass@j draws j of the k samples)"
                )
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ConfigError(f"max_prompts: must be >= 1 (or null), got {self.max_prompts}")

    @property
    def pass_ks(self) -> list[int]:
        """The pass@j values reported, 1 always included."""
        return sorted({1, *(self.pass_k if self.pass_k is not None else [self.samples_per_prompt])})
