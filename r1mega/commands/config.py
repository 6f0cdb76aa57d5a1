"""`r1mega config CFG [overrides]`: print the resolved, validated config (every default spelled out)."""

from __future__ import annotations

import argparse
import sys

import yaml

from r1mega.commands.common import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--world-size",
        type=int,
        default=None,
        help="also check the parallel layout against this many ranks",
    )


def run(args: argparse.Namespace) -> int:
    from r1mega.config import load_config
    from r1mega.configlib import strip_internal, to_dict

    cfg = load_config(args.config, args.overrides)
    if args.world_size is not None:
        cfg.check_layout(args.world_size)
    yaml.safe_dump(strip_internal(to_dict(cfg)), sys.stdout, sort_keys=False)
    return 0
