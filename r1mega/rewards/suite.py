"""The configured reward components, and how their values combine into one reward.

A component is a RewardFn `(sample, reference) -> float | dict[str, float]`. Its value is the float,
or the dict's "score"; a dict's other keys are reported as `component/key`. The total is
`reward = sum(weight[c] * value[c])` over the configured components, so R1-Zero's reward is
accuracy + format with weights 1 and 1.

Components run cheapest first (format, language, custom, accuracy last): if a slow check times out,
the ones already computed for that sample are kept.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

from r1mega.rewards.accuracy import accuracy_reward
from r1mega.rewards.config import RewardConfig
from r1mega.rewards.format import format_reward
from r1mega.rewards.language import language_reward
from r1mega.rewards.registry import load_reward_fn

__all__ = ["RewardSuite", "normalize_value", "RewardValueError", "TOTAL_KEY"]

TOTAL_KEY = "reward"


class RewardValueError(ValueError):
    """A reward function returned something that is not a finite number (or a dict with "score")."""


def normalize_value(name: str, value: Any) -> dict[str, float]:
    """A RewardFn result -> {name: score, name/key: extra, ...} of finite floats."""
    if isinstance(value, dict):
        if "score" not in value:
            raise RewardValueError(f"reward {name!r} returned a dict without a 'score' key: {sorted(value)}")
        out = {name: value["score"]}
        out.update({f"{name}/{k}": v for k, v in value.items() if k != "score"})
    else:
        out = {name: value}
    for key, v in out.items():
        if isinstance(v, bool):
            v = float(v)
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise RewardValueError(f"reward {key!r} must be a finite number, got {v!r}")
        out[key] = float(v)
    return out


class RewardSuite:
    """Builds every component callable from a RewardConfig (in the trainer and in each worker)."""

    def __init__(self, cfg: RewardConfig):
        self.cfg = cfg
        task_checks = {
            task: load_reward_fn(path, f"rewards.task_accuracy.{task}") for task, path in cfg.task_accuracy.items()
        }
        builtin: dict[str, Callable] = {
            "format": format_reward,
            "language": functools.partial(language_reward, language=cfg.language),
            "accuracy": functools.partial(
                accuracy_reward, boxed_fallback=cfg.boxed_fallback, custom=task_checks
            ),
        }
        custom = {name: load_reward_fn(path, f"rewards.custom.{name}") for name, path in cfg.custom.items()}
        order = ["format", "language", *sorted(custom), "accuracy"]
        self.functions: dict[str, Callable] = {}
        for name in order:
            if name in cfg.weights:
                self.functions[name] = builtin.get(name) or custom[name]
        self.weights = {name: float(cfg.weights[name]) for name in self.functions}

    @property
    def names(self) -> list[str]:
        """Component names in the order they run."""
        return list(self.functions)

    def names_for(self, reference: dict[str, Any]) -> list[str]:
        """Components that apply to a sample: a general prompt (reference prompt_type) has no
        accuracy check; its task reward comes from reward models (rewards.models)."""
        if reference.get("prompt_type", "reasoning") == "general":
            return [n for n in self.functions if n != "accuracy"]
        return list(self.functions)

    def run(self, name: str, sample: Any, reference: dict[str, Any]) -> dict[str, float]:
        """One component on one sample (exceptions propagate to the caller's error policy)."""
        return normalize_value(name, self.functions[name](sample, reference))

    def total(self, values: dict[str, float]) -> float:
        """Weighted sum; a component missing from `values` counts as 0."""
        return sum(w * values.get(name, 0.0) for name, w in self.weights.items())
