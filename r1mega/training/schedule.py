"""The learning-rate schedule: linear warmup, then constant / linear / cosine decay to min_lr.

The schedule runs as megatron's `OptimizerParamScheduler` (what Megatron-LM uses), configured from
the `optimizer` section (lr, min_lr, lr_warmup_steps, lr_warmup_init, lr_decay_style,
lr_decay_steps). `lr_at(cfg, total_steps, step)` is the same curve in closed form, for tests and
for printing a schedule without building an optimizer.

Step convention: the learning rate used by optimizer step k (k = 1, 2, ...) is `lr_at(..., k - 1)`:
the scheduler is created at step 0 and advanced once after each optimizer step, so the first step
trains at `lr_warmup_init` when there is a warmup and at `lr` otherwise. Weight decay is held
constant (no weight-decay schedule).
"""

from __future__ import annotations

import math

from r1mega.configlib import ConfigError
from r1mega.training.optimizer import OptimizerConfig

__all__ = ["build_lr_scheduler", "lr_at", "decay_steps"]


def decay_steps(cfg: OptimizerConfig, total_steps: int) -> int:
    """The step at which the decay reaches min_lr; checks it leaves room after the warmup."""
    steps = cfg.lr_decay_steps if cfg.lr_decay_steps is not None else total_steps
    if steps <= cfg.lr_warmup_steps:
        raise ConfigError(
            f"optimizer.lr_warmup_steps: {cfg.lr_warmup_steps} leaves no decay within "
            f"{steps} steps (lower it, or raise the number of steps / optimizer.lr_decay_steps)"
        )
    return steps


def lr_at(cfg: OptimizerConfig, total_steps: int, step: int) -> float:
    """The scheduled learning rate after `step` scheduler increments (closed form of megatron's)."""
    end = decay_steps(cfg, total_steps)
    warmup = cfg.lr_warmup_steps
    if warmup > 0 and step <= warmup:
        return cfg.lr_warmup_init + (cfg.lr - cfg.lr_warmup_init) * step / warmup
    if cfg.lr_decay_style == "constant":
        return cfg.lr
    if step > end:
        return cfg.min_lr
    ratio = (step - warmup) / (end - warmup)
    if cfg.lr_decay_style == "linear":
        coeff = 1.0 - ratio
    else:  # cosine
        coeff = 0.5 * (math.cos(math.pi * ratio) + 1.0)
    return cfg.min_lr + coeff * (cfg.lr - cfg.min_lr)


def build_lr_scheduler(optimizer, cfg: OptimizerConfig, total_steps: int):
    """megatron's OptimizerParamScheduler over `optimizer`, at step 0 (it sets the lr right away).

    Its `state_dict()` goes into training checkpoints; a resumed run restores the step count, and
    the schedule itself comes from the (possibly changed) config of the resumed run.
    """
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    return OptimizerParamScheduler(
        optimizer,
        init_lr=cfg.lr_warmup_init,
        max_lr=cfg.lr,
        min_lr=cfg.min_lr,
        lr_warmup_steps=cfg.lr_warmup_steps,
        lr_decay_steps=decay_steps(cfg, total_steps),
        lr_decay_style=cfg.lr_decay_style,
        start_wd=cfg.weight_decay,
        end_wd=cfg.weight_decay,
        wd_incr_steps=max(total_steps, 1),
        wd_incr_style="constant",
        # a resumed run follows the config it was started with now, not the checkpoint's copy
        use_checkpoint_opt_param_scheduler=False,
        override_opt_param_scheduler=True,
    )
