"""Config sections of the supervised trainer: `sft` (the loop: steps, batch sizes, evaluation) and
`pretrain` (the generated corpus `r1mega pretrain` trains on).

Both verbs run the same loop, configured by `sft`; the learning rate and its schedule live in the
`optimizer` section (lr, min_lr, lr_warmup_steps, lr_decay_style, lr_decay_steps). A stage that
needs other values (pretraining the tiny base at lr 3e-3 vs SFT at 5e-5) uses its own config file
or overrides, e.g. examples/configs/tiny_pretrain.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from r1mega.configlib import ConfigError

__all__ = ["SFTConfig", "PretrainConfig"]


@dataclass(kw_only=True)
class SFTConfig:
    steps: Optional[int] = 100
    """Optimizer steps to train (None: derived from `epochs`)."""
    epochs: Optional[float] = None
    """Passes over the train split, used when `steps` is None: steps = ceil(epochs * examples /
    global_batch_size). R1's SFT stages ran 2-3 epochs."""
    global_batch_size: int = 32
    """Samples (sequences) per optimizer step, over all data-parallel ranks."""
    micro_batch_size: int = 8
    """Most samples in one microbatch on one data-parallel rank; a step runs
    global_batch_size / dp samples per rank as several microbatches (gradient accumulation)."""
    micro_batch_tokens: Optional[int] = None
    """Token budget of a microbatch: samples x padded length stays within it, so short samples
    share a microbatch and long ones get their own. None: only micro_batch_size limits it."""
    pad_to_multiple: int = 1
    """Pad each microbatch's length to a multiple of this (8 suits GPU kernels). Sequence
    parallelism also needs a multiple of tp, which is added automatically."""
    eval_every: int = 50
    """Held-out loss every this many steps, and at the end (0: only at the end)."""
    eval_samples: Optional[int] = 256
    """Held-out examples per loss evaluation (None: the whole test split)."""
    accuracy_every: int = 0
    """Greedy-generation accuracy and format rate on held-out prompts every this many steps, and
    at the end (0: never; -1: only at the end)."""
    accuracy_samples: int = 128
    """Held-out prompts per accuracy evaluation."""
    max_new_tokens: int = 128
    """Generation cap of the accuracy evaluation."""
    params_dtype: Literal["float32", "bfloat16"] = "float32"
    """Parameter dtype; bfloat16 keeps fp32 main weights in the optimizer (GPU)."""

    def validate(self) -> None:
        if (self.steps is None) == (self.epochs is None):
            raise ConfigError("steps: set exactly one of steps and epochs (the other null)")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"steps: must be >= 1, got {self.steps}")
        if self.epochs is not None and not self.epochs > 0:
            raise ConfigError(f"epochs: must be > 0, got {self.epochs}")
        for name in ("global_batch_size", "micro_batch_size", "pad_to_multiple", "accuracy_samples", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.micro_batch_tokens is not None and self.micro_batch_tokens < 1:
            raise ConfigError(f"micro_batch_tokens: must be >= 1 (or null), got {self.micro_batch_tokens}")
        if self.eval_every < 0:
            raise ConfigError(f"eval_every: must be >= 0, got {self.eval_every}")
        if self.eval_samples is not None and self.eval_samples < 1:
            raise ConfigError(f"eval_samples: must be >= 1 (or null for the whole split), got {self.eval_samples}")
        if self.accuracy_every < -1:
            raise ConfigError(f"accuracy_every: must be >= -1, got {self.accuracy_every}")

    def check_data_parallel(self, dp: int) -> None:
        """At start-up, once the data-parallel size is known."""
        if self.global_batch_size % dp:
            raise ConfigError(
                f"sft.global_batch_size: {self.global_batch_size} is not divisible by the "
                f"data-parallel size {dp}"
            )

    def total_steps(self, num_examples: int) -> int:
        if self.steps is not None:
            return self.steps
        return max(1, -(-int(self.epochs * num_examples) // self.global_batch_size))


@dataclass(kw_only=True)
class PretrainConfig:
    """The corpus of `r1mega pretrain`: documents built from the procedural task in
    `data.procedural` (its task, difficulty knobs and wrong_solution_fraction), one per problem:
    the templated prompt (data.template) followed by a worked solution in the
    `<think>...</think> <answer>...</answer>` format, or by the bare answer."""

    format_fraction: float = 0.5
    """Share of documents whose response is the formatted worked solution; the others end with the
    bare answer (no tags, no reasoning). A base model trained on the mix answers in the format only
    part of the time, which leaves the format reward something to teach."""
    loss_on: Literal["document", "response"] = "document"
    """`document`: every token is a target (plain pretraining on the text); `response`: only the
    tokens after the prompt (like SFT)."""
    mixed_language_fraction: float = 0.0
    """Share of the formatted documents whose reasoning mixes in a second script: it opens by
    restating the problem in Chinese number words (`七+五+九`; r1mega/data/mixed_language.py).
    0 (the default) leaves the corpus exactly as without this option. The R1 recipe's tiny base
    (examples/recipes/r1_tiny.yaml) uses it so that R1-Zero mixes languages as in the paper."""
    export_hf: bool = True
    """Also write a Hugging Face export of the final model to run_dir/hf (safetensors, config.json,
    generation_config.json, tokenizer: r1mega.training.hf_export), loadable by transformers, SGLang
    and the built-in rollout engine. Not written when the run stops on a signal."""

    def validate(self) -> None:
        if not 0.0 <= self.format_fraction <= 1.0:
            raise ConfigError(f"format_fraction: must be in [0, 1], got {self.format_fraction}")
        if not 0.0 <= self.mixed_language_fraction <= 1.0:
            raise ConfigError(f"mixed_language_fraction: must be in [0, 1], got {self.mixed_language_fraction}")
