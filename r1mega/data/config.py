"""The `data` config section: where prompts come from, how they are templated and checked.

Two sources: `procedural` generates countdown or arithmetic problems in memory (the embedded default;
no files needed), `files` reads jsonl/parquet prompt datasets. Either way every row becomes a prompt
text (template applied), its token ids, and a reference dict for the rewards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from r1mega.configlib import ConfigError

__all__ = [
    "ArithmeticConfig",
    "CountdownConfig",
    "ProceduralConfig",
    "FieldsConfig",
    "DataConfig",
    "BUILTIN_TASKS",
]

BUILTIN_TASKS: tuple[str, ...] = ("math", "countdown", "arithmetic")
"""Task types with a built-in accuracy check; any other task name needs a custom one in `rewards`."""


@dataclass(kw_only=True)
class ArithmeticConfig:
    """Multi-digit arithmetic: `Calculate 345+78*12`, answer an integer."""

    min_digits: int = 1
    """Fewest digits of an operand."""
    max_digits: int = 3
    """Most digits of an operand (the main difficulty knob)."""
    min_operands: int = 2
    """Fewest operands in an expression."""
    max_operands: int = 3
    """Most operands in an expression (more operands = more reasoning steps)."""
    operators: list[str] = field(default_factory=lambda: ["+", "-", "*"])
    """Operators to draw from; a subset of + - *. Division is not offered: exact integer answers keep
    the worked solutions short."""

    def validate(self) -> None:
        if not 1 <= self.min_digits <= self.max_digits <= 30:
            raise ConfigError(
                f"min_digits/max_digits: need 1 <= min_digits <= max_digits <= 30, "
                f"got {self.min_digits}, {self.max_digits}"
            )
        if not 2 <= self.min_operands <= self.max_operands <= 10:
            raise ConfigError(
                f"min_operands/max_operands: need 2 <= min_operands <= max_operands <= 10, "
                f"got {self.min_operands}, {self.max_operands}"
            )
        _check_operators(self.operators, ("+", "-", "*"))


@dataclass(kw_only=True)
class CountdownConfig:
    """Countdown: reach a target from given numbers; the answer is an arithmetic expression."""

    min_numbers: int = 3
    """Fewest numbers given."""
    max_numbers: int = 4
    """Most numbers given (the main difficulty knob)."""
    min_number: int = 1
    """Smallest number drawn."""
    max_number: int = 50
    """Largest number drawn."""
    min_target: int = 1
    """Smallest target accepted."""
    max_target: int = 100
    """Largest target accepted."""
    operators: list[str] = field(default_factory=lambda: ["+", "-", "*", "/"])
    """Operators a solution may use; a subset of + - * /. Generated solutions keep every intermediate
    value a positive integer (classic countdown rules); the reward accepts any exact arithmetic."""
    use_all: bool = True
    """True: each number exactly once (the R1-Zero countdown task); False: each number at most once."""

    def validate(self) -> None:
        if not 2 <= self.min_numbers <= self.max_numbers <= 8:
            raise ConfigError(
                f"min_numbers/max_numbers: need 2 <= min_numbers <= max_numbers <= 8, "
                f"got {self.min_numbers}, {self.max_numbers}"
            )
        if not 1 <= self.min_number <= self.max_number:
            raise ConfigError(
                f"min_number/max_number: need 1 <= min_number <= max_number, "
                f"got {self.min_number}, {self.max_number}"
            )
        if not 1 <= self.min_target <= self.max_target:
            raise ConfigError(
                f"min_target/max_target: need 1 <= min_target <= max_target, "
                f"got {self.min_target}, {self.max_target}"
            )
        _check_operators(self.operators, ("+", "-", "*", "/"))


@dataclass(kw_only=True)
class ProceduralConfig:
    """Generated problems with verifiable answers (the embedded default's data)."""

    task: Literal["countdown", "arithmetic"] = "countdown"
    """Which generator."""
    seed: int = 0
    """Generation seed. The train/test split itself does not depend on it (see heldout_fraction)."""
    train_size: int = 20000
    """Problems in the train split."""
    test_size: int = 256
    """Problems in the held-out test split."""
    heldout_fraction: float = 0.1
    """Share of the problem space reserved for the test split, chosen by a hash of each problem, so
    the splits are disjoint by construction whatever the seed."""
    unique: bool = True
    """No repeated problem within a split (a small problem space then raises a clear error)."""
    wrong_solution_fraction: float = 0.0
    """Share of worked solutions (SFT traces) that contain one realistic mistake, e.g. a dropped
    carry, so a model pre-trained on them starts with a low-but-nonzero success rate."""
    countdown: CountdownConfig = field(default_factory=CountdownConfig)
    arithmetic: ArithmeticConfig = field(default_factory=ArithmeticConfig)
    general_fraction: float = 0.0
    """Share of RL prompts that are the embedded general prompts (r1mega/rm/tiny_data.py:
    prompt_type general, scored by reward models, no accuracy check), mixed into both splits: the
    tiny final RL stage's mix. RL prompts only; an SFT or pretraining job refuses it."""
    general_problems: Literal["two_operand", "task"] = "task"
    """Which embedded general problems (see r1mega/rm/tiny_data.py)."""

    def validate(self) -> None:
        if not 0.0 <= self.general_fraction < 1.0:
            raise ConfigError(f"general_fraction: must be in [0, 1), got {self.general_fraction}")
        if self.train_size < 0 or self.test_size < 0:
            raise ConfigError(f"train_size/test_size: must be >= 0, got {self.train_size}, {self.test_size}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ConfigError(f"heldout_fraction: must be in (0, 1), got {self.heldout_fraction}")
        if not 0.0 <= self.wrong_solution_fraction <= 1.0:
            raise ConfigError(f"wrong_solution_fraction: must be in [0, 1], got {self.wrong_solution_fraction}")


@dataclass(kw_only=True)
class FieldsConfig:
    """Column names in jsonl/parquet rows."""

    prompt: str = "prompt"
    """The user's question as one string (a row has this or `messages`)."""
    messages: str = "messages"
    """A chat: a list of {role, content}; prompt rows for chat templates, or SFT conversations."""
    answer: list[str] = field(default_factory=lambda: ["answer", "ground_truth", "solution"])
    """Ground-truth column names, tried in order; the first one present is used."""
    task: str = "task"
    """Task type column (math, countdown, arithmetic, or a custom name); rows without it get
    `data.default_task`."""
    metadata: str = "metadata"
    """Optional mapping handed to the rewards (countdown needs `numbers`)."""
    response: str = "response"
    """SFT only: the target response for a `prompt` row."""
    prompt_type: str = "prompt_type"
    """RL: `reasoning` (default; rule rewards) or `general` (reward-model rewards, rewards.models)."""

    def validate(self) -> None:
        for name in ("prompt", "messages", "task", "metadata", "response", "prompt_type"):
            if not getattr(self, name):
                raise ConfigError(f"{name}: must be a non-empty column name")
        if not self.answer or any(not a for a in self.answer):
            raise ConfigError("answer: must list at least one non-empty column name")


@dataclass(kw_only=True)
class DataConfig:
    source: Literal["procedural", "files"] = "procedural"
    """`procedural`: generate problems (see `procedural`); `files`: read train_files/test_files."""
    train_files: list[str] = field(default_factory=list)
    """jsonl (.jsonl/.json) or parquet (.parquet) prompt files for training (source: files)."""
    test_files: list[str] = field(default_factory=list)
    """Held-out evaluation files (source: files); may be empty."""
    procedural: ProceduralConfig = field(default_factory=ProceduralConfig)
    fields: FieldsConfig = field(default_factory=FieldsConfig)
    default_task: str = "math"
    """Task type for rows without a task column."""
    tokenizer: str = "tiny"
    """`tiny` (the small tokenizer shipped in r1mega/assets, vocab <= 512) or a local directory
    holding a Hugging Face tokenizer. Never downloaded."""
    template: Literal["r1_zero", "chat", "raw"] = "r1_zero"
    """`r1_zero`: the DeepSeek-R1-Zero template (paper, Table 1); `chat`: the tokenizer's chat
    template; `raw`: the prompt text as is."""
    think_in_prompt: bool = False
    """End the prompt with `<think>` so generation starts inside the reasoning (many R1-Zero
    reproductions do this). False keeps the paper's template, which ends at `Assistant:`. The rewards
    see the prompt's trailing `<think>` as part of the response either way."""
    system_prompt: Optional[str] = None
    """System message for `chat` templates; None sends none."""
    max_prompt_tokens: int = 256
    """Rows whose templated prompt is longer are errors (handled per on_error)."""
    max_sft_tokens: int = 512
    """SFT examples (prompt + response) longer than this are errors (handled per on_error)."""
    on_error: Literal["fail", "skip"] = "fail"
    """A malformed row (bad JSON, missing field, empty or over-long prompt): `fail` stops with its
    file:line; `skip` drops it, counts it and reports the counts and first locations."""
    shuffle: bool = True
    """Shuffle prompts every epoch (seeded; resumable from a checkpoint)."""
    seed: int = 0
    """Seed of the per-epoch shuffle."""

    def validate(self) -> None:
        if self.source == "files" and not self.train_files:
            raise ConfigError("train_files: source is 'files' but no train file is given")
        for name in ("train_files", "test_files"):
            for i, path in enumerate(getattr(self, name)):
                if not path.endswith((".jsonl", ".json", ".parquet")):
                    raise ConfigError(
                        f"{name}[{i}]: {path!r} must end with .jsonl, .json or .parquet"
                    )
        if not self.default_task:
            raise ConfigError("default_task: must be a non-empty task name")
        if not self.tokenizer:
            raise ConfigError("tokenizer: must be 'tiny' or a local tokenizer directory")
        if self.max_prompt_tokens < 1:
            raise ConfigError(f"max_prompt_tokens: must be >= 1, got {self.max_prompt_tokens}")
        if self.max_sft_tokens < 2:
            raise ConfigError(f"max_sft_tokens: must be >= 2, got {self.max_sft_tokens}")
        if self.system_prompt is not None and self.template != "chat":
            raise ConfigError("system_prompt: only the chat template takes a system prompt")


def _check_operators(ops: list[str], allowed: tuple[str, ...]) -> None:
    if not ops:
        raise ConfigError(f"operators: must list at least one of {list(allowed)}")
    bad = [op for op in ops if op not in allowed]
    if bad:
        raise ConfigError(f"operators: {bad} not allowed; choose from {list(allowed)}")
    if len(set(ops)) != len(ops):
        raise ConfigError(f"operators: {ops} has duplicates")
