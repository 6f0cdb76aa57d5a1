"""`r1mega train CFG [overrides] [--resume auto|none|PATH]`: RL post-training (GRPO and variants).

The loop of r1mega/training/rl.py: rollout with the engine of `rollout`, rewards of `rewards`, the
algorithm of `algorithm`, sizes and evaluation of `rl`, optimizer and schedule of `optimizer`,
checkpoints per `checkpoint` (`checkpoint.init_from`: the starting model; `rl.base_config`: a
pretrain config that makes it first when it is missing). Launch one process per device
(torchrun / srun); a lone process is a single-rank job.
"""

from __future__ import annotations

import argparse

from r1mega.commands.sft import add_arguments as _add_stage_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_stage_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from r1mega.config import load_config
    from r1mega.training.rl_job import run_rl

    overrides = list(args.overrides)
    if args.resume is not None:
        overrides.append(f"checkpoint.resume={args.resume}")
    cfg = load_config(args.config, overrides)
    result = run_rl(cfg)
    if result.preempted:
        print(f"r1mega train: stopped by a signal at step {result.step}; checkpoint {result.checkpoint}")
    return 0
