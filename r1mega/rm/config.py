"""The `rm:` config section of `r1mega rm`: preference data, the loop and the losses.

Kept apart from the trainer so that loading a config never imports torch or megatron. The model is
the job's `model:` section with `head: score` (set automatically by `r1mega rm`); its starting
weights come from `checkpoint.init_from` (a run's checkpoint or an HF directory; the LM head is
dropped and the score head starts fresh).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from r1mega.configlib import ConfigError

__all__ = ["RMConfig", "TinyPreferenceConfig", "DEFAULT_TEMPLATE"]

DEFAULT_TEMPLATE = "User: {prompt}\nAssistant: {response}"
"""How a (prompt, response) pair becomes the reward model's input text."""


@dataclass(kw_only=True)
class TinyPreferenceConfig:
    """The embedded preference data (r1mega/rm/tiny_data.py): general prompts whose preference is a
    hidden rule, pairs and labels generated from it."""

    train_size: int = 768
    """Generated training prompts (each gives one pair and two pointwise rows)."""
    test_size: int = 128
    """Generated held-out prompts (disjoint problems)."""
    seed: int = 0
    kind: Literal["pairwise", "pointwise", "both"] = "pairwise"
    """`pairwise`: helpfulness pairs (summaries); `pointwise`: safety labels (whole responses);
    `both`: one RM on both (a scalar that must learn both rules)."""
    problems: Literal["two_operand", "task"] = "two_operand"
    """`two_operand`: a +/- b with two-digit numbers; `task`: three one-digit additions in the tiny
    arithmetic task's reasoning format (what the tiny recipe's policy can answer)."""
    wrong_answer_share: float = 0.0
    """Share of rejected summaries that have the preferred form but a wrong number: the RM must
    then check the answer, not only the form (a policy otherwise learns to write any short
    sentence with any number)."""

    def validate(self) -> None:
        if self.train_size < 1 or self.test_size < 1:
            raise ConfigError(f"train_size/test_size: must be >= 1, got {self.train_size}/{self.test_size}")
        if not 0.0 <= self.wrong_answer_share <= 1.0:
            raise ConfigError(f"wrong_answer_share: must be in [0, 1], got {self.wrong_answer_share}")


@dataclass(kw_only=True)
class RMConfig:
    source: Literal["files", "tiny"] = "files"
    """`files`: read train_files/test_files (jsonl); `tiny`: generate the embedded preference data."""
    train_files: list[str] = field(default_factory=list)
    """jsonl files. A pairwise row is {"prompt", "chosen", "rejected"}; a pointwise row is
    {"prompt", "response", "label"} (label 0/1 or false/true). Optional key: "id". Files may mix
    both kinds."""
    test_files: list[str] = field(default_factory=list)
    """Held-out rows in the same format: pairwise accuracy and pointwise AUC are measured on them."""
    tiny: TinyPreferenceConfig = field(default_factory=TinyPreferenceConfig)
    template: str = DEFAULT_TEMPLATE
    """The input text of a (prompt, response) pair; must contain {prompt} and {response}. RL scoring
    (rewards.models) uses the template saved with the reward model, so both read the same text."""
    max_tokens: int = 512
    """A row longer than this (tokens of the templated text) is refused, naming file and row."""
    steps: int = 200
    """Optimizer steps."""
    global_batch_size: int = 32
    """Units (a pair or a pointwise row) per optimizer step, over all data-parallel ranks."""
    micro_batch_size: int = 16
    """Most sequences in one microbatch (a pair is two sequences and never split)."""
    micro_batch_tokens: Optional[int] = None
    """Token budget of a microbatch (sequences x padded length); None: only micro_batch_size."""
    pad_to_multiple: int = 1
    """Pad each microbatch's length to a multiple of this (SP adds tp automatically)."""
    pointwise_weight: float = 1.0
    """Weight of a pointwise row's BCE against a pair's Bradley-Terry loss; the loss is the
    (weighted) sum over units divided by the number of units of the global batch."""
    eval_every: int = 50
    """Held-out accuracy/AUC every this many steps, and at the end (0: only at the end)."""
    eval_samples: Optional[int] = None
    """Held-out units per evaluation (None: all)."""
    params_dtype: Literal["float32", "bfloat16"] = "float32"
    export_hf: bool = True
    """Write run_dir/hf at the end: the family's ...ForSequenceClassification (score.weight,
    num_labels=1, pad_token_id) with the tokenizer and `r1mega_rm.json` (template)."""

    def validate(self) -> None:
        for name in ("train_files", "test_files"):
            for i, path in enumerate(getattr(self, name)):
                if not path.endswith(".jsonl"):
                    raise ConfigError(f"{name}[{i}]: {path!r} must be a .jsonl file")
        if "{prompt}" not in self.template or "{response}" not in self.template:
            raise ConfigError(f"template: must contain {{prompt}} and {{response}}, got {self.template!r}")
        for name in ("max_tokens", "steps", "global_batch_size", "pad_to_multiple"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.micro_batch_size < 2:
            raise ConfigError(f"micro_batch_size: must be >= 2 (a pair is two sequences), got {self.micro_batch_size}")
        if self.micro_batch_tokens is not None and self.micro_batch_tokens < 2:
            raise ConfigError(f"micro_batch_tokens: must be >= 2 (or null), got {self.micro_batch_tokens}")
        if self.pointwise_weight < 0:
            raise ConfigError(f"pointwise_weight: must be >= 0, got {self.pointwise_weight}")
        if self.eval_every < 0:
            raise ConfigError(f"eval_every: must be >= 0, got {self.eval_every}")
        if self.eval_samples is not None and self.eval_samples < 1:
            raise ConfigError(f"eval_samples: must be >= 1 (or null), got {self.eval_samples}")

    def check_for_job(self) -> None:
        """At `r1mega rm` start (other jobs carry this section unused)."""
        if self.source == "files" and not self.train_files:
            raise ConfigError("rm.train_files: rm.source is 'files' but no train file is given")

    def check_data_parallel(self, dp: int) -> None:
        if self.global_batch_size % dp:
            raise ConfigError(f"rm.global_batch_size: {self.global_batch_size} is not divisible by the data-parallel size {dp}")
