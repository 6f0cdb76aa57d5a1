"""`r1mega pretrain CFG [overrides] [--resume auto|none|PATH]`: train a base model on generated task text.

The corpus comes from `data.procedural` (task, difficulty, wrong_solution_fraction) shaped by the
`pretrain` section (format_fraction, loss_on); the loop is the supervised trainer's (`sft` section:
steps, batch sizes; `optimizer`: lr and schedule). The result, a megatron checkpoint under
run_dir/checkpoints (plus an HF export when available), is the base the RL stage starts from.
"""

from __future__ import annotations

import argparse

from r1mega.commands import sft


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sft.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return sft.run_stage(args, "pretrain")
