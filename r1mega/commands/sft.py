"""`r1mega sft CFG [overrides] [--resume auto|none|PATH]`: supervised fine-tuning on an SFT dataset.

Trains on `data` (prompt + response rows, loss on the response only; see docs/data.md) with the loop
in the `sft` section, the optimizer and LR schedule in `optimizer`, and checkpoints per `checkpoint`
(`checkpoint.init_from` names the starting weights, e.g. a pretrained base). Launch one process per
device (torchrun / srun); a lone process is a single-rank job.
"""

from __future__ import annotations

import argparse

from r1mega.commands.common import add_config_arguments

STAGE = "sft"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--resume",
        default=None,
        metavar="auto|none|PATH",
        help="shorthand for checkpoint.resume=...: auto continues from the latest complete checkpoint",
    )


def run(args: argparse.Namespace) -> int:
    return run_stage(args, STAGE)


def run_stage(args: argparse.Namespace, stage: str) -> int:
    from r1mega.config import load_config
    from r1mega.training.sft_job import run_supervised

    overrides = list(args.overrides)
    if args.resume is not None:
        overrides.append(f"checkpoint.resume={args.resume}")
    cfg = load_config(args.config, overrides)
    result = run_supervised(cfg, stage)
    if result.preempted:
        print(f"r1mega {stage}: stopped by a signal at step {result.step}; checkpoint {result.checkpoint}")
    return 0
