"""Arguments shared by verbs that take a config."""

from __future__ import annotations

import argparse


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML config file (e.g. examples/configs/tiny.yaml)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides applied after the YAML, e.g. train.lr=1e-5 parallel.tp=2",
    )
