"""The `rl:` config section: the RL loop's sizes, evaluation and weight sync (torch-free).

What is optimised (GRPO, DAPO, ...) lives in the `algorithm:` section; sampling in `rollout:`;
learning rate, schedule and clipping in `optimizer:`; rewards in `rewards:`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from r1mega.configlib import ConfigError

__all__ = ["RLConfig"]


@dataclass(kw_only=True)
class RLConfig:
    steps: int = 100
    """Rollout batches to train on (each: rollout -> rewards -> advantages -> updates -> weight sync)."""
    prompts_per_step: int = 16
    """Prompts per rollout batch; each is sampled algorithm.group_size times."""
    micro_batch_size: int = 16
    """Most sequences in one microbatch on one data-parallel rank."""
    micro_batch_tokens: Optional[int] = None
    """Token budget of a microbatch (dynamic micro-batching): sequences x padded length stays within
    it, so short responses share a microbatch and long ones get their own. None: only
    micro_batch_size limits it."""
    share_prompts: bool = False
    """Train on shared-prompt rows: one prompt followed by all its sampled responses, each seeing the
    prompt and itself (training/shared_prompt.py), so a group's prompt goes through the policy once.
    Same loss and gradients up to float rounding; needs attention that takes a dense mask (megatron's
    local spec: CPU, or GPUs without transformer-engine) and no context parallelism."""
    pad_to_multiple: int = 1
    """Pad each microbatch's length to a multiple of this (sequence parallelism adds tp)."""
    params_dtype: Literal["float32", "bfloat16"] = "float32"
    """Parameter dtype of the trained model; bfloat16 keeps fp32 main weights in the optimizer."""
    logprob_backend: Literal["auto", "triton", "torch"] = "auto"
    """Implementation of the fused log-prob and policy-loss kernels (auto: triton on GPU)."""
    weight_sync_bucket_mb: float = 256.0
    """Size of the buckets in which weights stream from the trainer to the rollout engine."""
    eval_every: int = 10
    """Held-out evaluation every this many steps, and at the end (0: only at the end; -1: never)."""
    eval_at_start: bool = True
    """Also evaluate the starting model before the first step (the baseline the run improves on)."""
    eval_samples: int = 256
    """Held-out prompts per evaluation (the first ones of the test split)."""
    eval_pass_k: int = 4
    """Samples per held-out prompt for pass@1 (mean accuracy over k samples at eval_temperature);
    greedy accuracy is measured too. 0 skips the sampled part."""
    general_check: Optional[str] = None
    """Import path `package.module:function` of a check `(response_text, reference) -> float`
    averaged over greedy completions of held-out general prompts as eval/general_check: a measure
    that does not go through any reward model (tiny final RL: r1mega.rm.tiny_data:rule_check)."""
    eval_temperature: float = 1.0
    """Sampling temperature of the pass@1 evaluation."""
    log_samples_every: int = 10
    """Write the step's rollouts (prompt, response, rewards) to rollouts/step<N>.jsonl every this
    many steps (0: never)."""
    base_config: Optional[str] = None
    """A `r1mega pretrain` config to run first when checkpoint.init_from has no complete
    checkpoint yet (the tiny default trains its own base model); a path relative to the working
    directory. None: the base must exist."""

    def validate(self) -> None:
        for name in ("steps", "prompts_per_step", "micro_batch_size", "pad_to_multiple", "eval_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.micro_batch_tokens is not None and self.micro_batch_tokens < 1:
            raise ConfigError(f"micro_batch_tokens: must be >= 1 (or null), got {self.micro_batch_tokens}")
        if not self.weight_sync_bucket_mb > 0:
            raise ConfigError(f"weight_sync_bucket_mb: must be > 0, got {self.weight_sync_bucket_mb}")
        if self.eval_every < -1:
            raise ConfigError(f"eval_every: must be >= -1, got {self.eval_every}")
        if self.general_check is not None:
            from r1mega.rewards.config import IMPORT_PATH_RE

            if not IMPORT_PATH_RE.match(self.general_check):
                raise ConfigError(f"general_check: {self.general_check!r} is not an import path 'package.module:function'")
        if self.eval_pass_k < 0:
            raise ConfigError(f"eval_pass_k: must be >= 0, got {self.eval_pass_k}")
        if not self.eval_temperature > 0:
            raise ConfigError(f"eval_temperature: must be > 0 (greedy accuracy is always measured), got {self.eval_temperature}")
        if self.log_samples_every < 0:
            raise ConfigError(f"log_samples_every: must be >= 0, got {self.log_samples_every}")
        if self.base_config is not None and not self.base_config:
            raise ConfigError("base_config: must be a config path or null")

    def check_layout(self, dp: int, group_size: int, updates_per_batch: int) -> None:
        """At start-up, once the data-parallel size is known: every mini-batch splits evenly."""
        samples = self.prompts_per_step * group_size
        if samples % updates_per_batch:
            raise ConfigError(
                f"rl.prompts_per_step * algorithm.group_size = {samples} is not divisible by "
                f"algorithm.updates_per_batch={updates_per_batch}"
            )
        if (samples // updates_per_batch) % dp:
            raise ConfigError(
                f"rl: a mini-batch of {samples // updates_per_batch} samples is not divisible by the "
                f"data-parallel size {dp}"
            )
