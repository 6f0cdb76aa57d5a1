"""The `rewards` config section: which components, their weights, custom functions, the worker pool."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Optional

from r1mega.configlib import ConfigError

__all__ = ["RewardConfig", "RewardModelSpec", "BUILTIN_COMPONENTS", "IMPORT_PATH_RE"]

BUILTIN_COMPONENTS: tuple[str, ...] = ("accuracy", "format", "language")
IMPORT_PATH_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")


@dataclass(kw_only=True)
class RewardModelSpec:
    """One reward model scored inside RL (r1mega/rm/scoring.py): forward-only megatron passes on the
    trainer's ranks after rollout, in the trainer's parallel layout (the RM's checkpoint loads under
    any layout). Its reward is `weight * score`, added to the sample's rule rewards."""

    name: str
    """Logged as reward/rm/<name>, rm/<name>/mean (over the samples it scored), rm/<name>/share."""
    checkpoint: str
    """A reward model written by `r1mega rm`: its run's checkpoints (or an iter_N inside), or its HF
    export (...ForSequenceClassification). Same vocabulary as the policy. Never trained here (frozen)."""
    part: Literal["summary", "full"] = "summary"
    """`summary`: the text after the reasoning's closing `</think>` (R1's helpfulness RM);
    `full`: the whole response, reasoning included (R1's harmlessness RM)."""
    weight: float = 1.0
    prompt_types: list[str] = field(default_factory=lambda: ["general"])
    """Prompt types (the rows' prompt_type) whose samples this RM scores."""
    template: str = "User: {prompt}\nAssistant: {response}"
    """The RM's input text: must be the template it was trained with (rm.template)."""
    micro_batch_tokens: int = 8192
    """Token budget of one scoring microbatch (sequences x padded length)."""
    offload: Optional[bool] = None
    """Keep the RM's weights in host memory between scorings and put them on the GPU only while it
    scores (r1mega/rm/residency.py), so a colocated RM costs GPU memory only after rollout. None:
    on with CUDA, off without (on CPU the weights are in host memory already)."""
    missing_summary_score: float = 0.0
    """The score (before `weight`) of a response with no closed reasoning when part is summary:
    there is no summary to score. The format reward is what teaches closing the reasoning."""

    def validate(self) -> None:
        if not self.name or "/" in self.name:
            raise ConfigError(f"name: {self.name!r} must be non-empty, without '/'")
        if not self.checkpoint:
            raise ConfigError(f"{self.name}.checkpoint: required")
        from r1mega.data.rows import PROMPT_TYPES

        bad = [t for t in self.prompt_types if t not in PROMPT_TYPES]
        if bad or not self.prompt_types:
            raise ConfigError(f"{self.name}.prompt_types: {self.prompt_types} must be a non-empty subset of {list(PROMPT_TYPES)}")
        if "{prompt}" not in self.template or "{response}" not in self.template:
            raise ConfigError(f"{self.name}.template: must contain {{prompt}} and {{response}}")
        if self.micro_batch_tokens < 1:
            raise ConfigError(f"{self.name}.micro_batch_tokens: must be >= 1")


@dataclass(kw_only=True)
class RewardConfig:
    weights: dict[str, float] = field(default_factory=lambda: {"accuracy": 1.0, "format": 1.0, "language": 0.0})
    """Component -> weight in the total reward (R1-Zero: accuracy + format). Built-in components are
    accuracy, format and language; any other name must be defined in `custom`. Every listed
    component is computed and logged, weight 0 included (language is monitored, not rewarded, by
    default)."""
    custom: dict[str, str] = field(default_factory=dict)
    """Extra components: name -> `package.module:function`, a RewardFn
    `(sample, reference) -> float | dict[str, float]` (a dict needs a "score" key; other keys are
    logged as `name/key`)."""
    task_accuracy: dict[str, str] = field(default_factory=dict)
    """Accuracy for task types beyond math/countdown/arithmetic (or replacing one of them):
    task name -> `package.module:function`, a RewardFn like those in `custom`."""
    language: Literal["en", "zh"] = "en"
    """Target language of the reasoning for the language consistency component."""
    boxed_fallback: bool = True
    """Accuracy reads the last `\\boxed{}` outside the reasoning when there is no <answer> block."""
    num_workers: int = 4
    """Reward worker processes per training process (each rank scores its own samples). 0 scores in
    the calling process without any timeout (debugging only)."""
    timeout_s: float = 10.0
    """Hard limit per check (one component of one sample): a check still running is killed together
    with its worker process, scores 0 and is counted; a fresh worker takes its place."""
    worker_memory_mb: Optional[int] = 4096
    """Address-space limit of each worker (RLIMIT_AS), so a check that builds an astronomically large
    number fails with MemoryError instead of exhausting the node's memory. None = no limit."""
    models: list[RewardModelSpec] = field(default_factory=list)
    """Reward models scored after rollout (R1's final RL stage: helpfulness on the summary of general
    prompts, harmlessness on every full response); see RewardModelSpec and docs/reward_models.md."""
    on_error: Literal["raise", "zero"] = "raise"
    """A reward function that raises: `raise` stops with its traceback (a bug should be seen);
    `zero` scores 0 and counts it."""

    def validate(self) -> None:
        if not self.weights:
            raise ConfigError("weights: at least one reward component is needed")
        for name in self.custom:
            if name in BUILTIN_COMPONENTS:
                raise ConfigError(f"custom.{name}: {name!r} is a built-in component; pick another name")
            if name == "reward" or "/" in name:
                raise ConfigError(f"custom.{name}: 'reward' and names with '/' are reserved for the logs")
        for name in self.weights:
            if name not in BUILTIN_COMPONENTS and name not in self.custom:
                raise ConfigError(
                    f"weights.{name}: unknown component; built-in are {list(BUILTIN_COMPONENTS)}, custom "
                    f"ones must be defined under rewards.custom"
                )
        for section in ("custom", "task_accuracy"):
            for name, path in getattr(self, section).items():
                if not IMPORT_PATH_RE.match(path):
                    raise ConfigError(f"{section}.{name}: {path!r} is not an import path 'package.module:function'")
        for name in self.custom:
            if name not in self.weights:
                raise ConfigError(f"custom.{name}: defined but has no weight under rewards.weights (0 to only log it)")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ConfigError(f"models: names must be unique, got {names}")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers: must be >= 0, got {self.num_workers}")
        if not self.timeout_s > 0:
            raise ConfigError(f"timeout_s: must be > 0, got {self.timeout_s}")
        if self.worker_memory_mb is not None and self.worker_memory_mb < 256:
            raise ConfigError(f"worker_memory_mb: must be >= 256 (or null), got {self.worker_memory_mb}")

    def check_tasks(self, tasks: set[str] | list[str]) -> None:
        """At start-up: every task type in the data has an accuracy check (if accuracy is used)."""
        if "accuracy" not in self.weights:
            return
        from r1mega.rewards.accuracy import BUILTIN_CHECKS

        missing = sorted(set(tasks) - set(BUILTIN_CHECKS) - set(self.task_accuracy))
        if missing:
            raise ConfigError(
                f"rewards.task_accuracy: the data has task types {missing} with no accuracy check; map "
                "each to 'package.module:function'"
            )
