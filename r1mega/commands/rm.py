"""`r1mega rm CFG [overrides] [--resume auto|none|PATH]`: train a reward model.

The job's `model:` with a scalar head (`model.head: score`, set automatically) learns from
preference pairs (Bradley-Terry) and pointwise labels (BCE) in `rm.train_files`, or from the
embedded preference data (`rm.source: tiny`); held-out pairwise accuracy and AUC are logged.
`checkpoint.init_from` names the starting weights (a run's checkpoint or an HF directory; the LM
head is dropped). See docs/reward_models.md.
"""

from __future__ import annotations

import argparse

from r1mega.commands.common import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--resume", default=None, metavar="auto|none|PATH", help="shorthand for checkpoint.resume=...")


def run(args: argparse.Namespace) -> int:
    from r1mega.config import load_config
    from r1mega.rm.job import run_reward_model

    overrides = list(args.overrides)
    if args.resume is not None:
        overrides.append(f"checkpoint.resume={args.resume}")
    result = run_reward_model(load_config(args.config, overrides))
    if result.preempted:
        print(f"r1mega rm: stopped by a signal at step {result.step}; checkpoint {result.checkpoint}")
    else:
        shown = {k: round(v, 4) for k, v in result.metrics.items() if k.startswith("eval/")}
        print(f"r1mega rm: {result.step} steps; held-out {shown}")
    return 0
