"""Arguments shared by verbs that take a config."""

from __future__ import annotations

import argparse

CONFIG_EXAMPLE = "examples/configs/tiny.yaml"
OVERRIDE_EXAMPLES = ("optimizer.lr=1e-5", "parallel.tp=2")
"""The examples the help text shows; tests/test_cli.py loads them, so they always parse."""


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help=f"YAML config file (e.g. {CONFIG_EXAMPLE})")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides applied after the YAML, e.g. " + " ".join(OVERRIDE_EXAMPLES),
    )
