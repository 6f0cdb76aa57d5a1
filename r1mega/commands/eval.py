"""`r1mega eval CONFIG --model CKPT --data FILE... [--out DIR] [key=value ...]`: DeepSeek-R1's
evaluation of a checkpoint on held-out prompt files.

CONFIG is a job YAML (the one `train`/`sft` take, or any with a `model` section): its `eval`
section sets k, temperature, top-p and pass@j (docs/eval.md), `data` the tokenizer, template and
field names of the prompt files, `rollout` the engine, `rewards` the accuracy checks of custom
tasks. CKPT is a run directory, its checkpoints/ or an iter_N (megatron), or an HF directory.
Writes DIR/eval.json, DIR/eval.md and DIR/samples.jsonl (default DIR: the run directory's eval/).
"""

from __future__ import annotations

import argparse
import sys

from r1mega.commands.common import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--model", required=True, metavar="CKPT",
                        help="run dir, checkpoint root, iter_N checkpoint, or HF directory to evaluate")
    parser.add_argument("--data", required=True, nargs="+", metavar="FILE",
                        help="held-out prompt files (jsonl/parquet with prompt/answer/task fields)")
    parser.add_argument("--out", default=None, metavar="DIR", help="output directory (default: RUN_DIR/eval)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from r1mega.config import load_config
    from r1mega.configlib import ConfigError
    from r1mega.data.errors import DataError
    from r1mega.eval.runner import run_eval

    if args.config is None:
        raise ConfigError("r1mega eval needs a config (a job YAML with at least a `model` section)")
    cfg = load_config(args.config, list(args.overrides))
    out = Path(args.out) if args.out else cfg.run.run_dir / "eval"
    try:
        report = run_eval(cfg.eval, args.model, args.data, out, run_config=cfg)
    except (ValueError, DataError, FileNotFoundError, RuntimeError) as e:  # CheckpointError is a ValueError
        print(f"r1mega eval: {e}", file=sys.stderr)
        return 2
    m = report["all"]
    k = cfg.eval.samples_per_prompt
    print(f"r1mega eval: {int(m['prompts'])} prompts x {k} samples: pass@1 {100 * m['pass@1']:.1f}%, "
          f"cons@{k} {100 * m[f'cons@{k}']:.1f}%, format {100 * m['format']:.1f}%, "
          f"language {100 * m['language_consistency']:.1f}%, mean length {m['mean_length']:.1f}; wrote {out}/eval.md")
    return 0
