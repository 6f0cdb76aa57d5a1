"""`r1mega <verb> [config.yaml] [key=value ...]`: the command-line entry point.

Each verb lives in `r1mega/commands/<verb>.py` with `add_arguments(parser)` and `run(args) -> int`;
it is imported only when invoked, so `r1mega --help` stays fast and never imports megatron or torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from r1mega.library_warnings import quiet_library_warnings

# verb -> (module, one-line help). Keep in the order a user meets them.
VERBS: dict[str, tuple[str, str]] = {
    "config": ("r1mega.commands.config", "resolve a config (YAML + overrides), validate it and print it"),
    "plan": ("r1mega.commands.plan", "per-GPU memory of a config's layout, a verdict, and a layout that fits"),
    "data": ("r1mega.commands.data", "write a generated countdown/arithmetic split as jsonl or parquet"),
    "pretrain": ("r1mega.commands.pretrain", "train a base model on generated task text (the R1-Zero starting point)"),
    "sft": ("r1mega.commands.sft", "supervised fine-tuning (response-only loss) on an SFT dataset"),
    "rm": ("r1mega.commands.rm", "reward model: scalar head, Bradley-Terry pairs / pointwise labels, HF export"),
    "train": ("r1mega.commands.train", "RL post-training: GRPO / Dr.GRPO / DAPO / GSPO / CISPO / RLOO / REINFORCE++"),
    "eval": ("r1mega.commands.eval", "pass@1 over k samples, cons@k, pass@k, format, language, length of a checkpoint"),
    "recipe": ("r1mega.commands.recipe", "the DeepSeek-R1 recipe as one resumable pipeline of stages"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="r1mega",
        description="DeepSeek-R1 style RL post-training on megatron-core.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="<verb>")
    sub.required = True
    for verb, (module, help_text) in VERBS.items():
        p = sub.add_parser(verb, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    quiet_library_warnings()
    parser = build_parser()
    args = parser.parse_args(argv)
    from r1mega.configlib import ConfigError

    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except ConfigError as e:
        print(f"r1mega {args.verb}: config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
