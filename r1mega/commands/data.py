"""`r1mega data [CFG] [overrides] --split test --out test.jsonl`: write a generated problem split.

Writes the procedural task configured under `data.procedural` (countdown or arithmetic, with its
difficulty knobs) as a jsonl or parquet prompt dataset (`prompt`, `answer`, `task`, `metadata`, and
with --solutions a worked `response`), the same schema `data.source: files` reads back. Without a
config file, the `data` section's defaults plus the given `data.*` overrides are used.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from r1mega.commands.common import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--split", choices=["train", "test"], default="train", help="which split (default train)")
    parser.add_argument("--out", required=True, help="output file, .jsonl or .parquet")
    parser.add_argument(
        "--num", type=int, default=None, help="number of problems (default: data.procedural.train_size/test_size)"
    )
    parser.add_argument(
        "--solutions", action="store_true", help="add a worked solution as `response` (an SFT dataset)"
    )


def _data_config(args: argparse.Namespace):
    from r1mega.configlib import ConfigError, apply_overrides, from_dict

    if args.config is not None and "=" in args.config and not Path(args.config).exists():
        # `r1mega data data.procedural.task=arithmetic ...`: no config file, only overrides
        args.overrides = [args.config, *args.overrides]
        args.config = None
    if args.config is not None:
        from r1mega.config import load_config

        return load_config(args.config, args.overrides).data
    raw = apply_overrides({}, list(args.overrides))
    other = sorted(k for k in raw if k != "data")
    if other:
        raise ConfigError(f"without a config file only data.* overrides apply; got {other}")
    from r1mega.data.config import DataConfig

    return from_dict(DataConfig, raw.get("data", {}), where="data")


def run(args: argparse.Namespace) -> int:
    from r1mega.configlib import ConfigError
    from r1mega.data.tasks import generate

    cfg = _data_config(args)
    if cfg.source != "procedural":
        raise ConfigError("data.source: `r1mega data` writes generated problems; set data.source: procedural")
    if args.num is not None and args.num < 0:
        raise ConfigError(f"--num: must be >= 0, got {args.num}")
    out = Path(args.out)
    if out.suffix not in (".jsonl", ".parquet"):
        raise ConfigError(f"--out: {out} must end with .jsonl or .parquet")
    rows = [ex.to_row(with_solution=args.solutions) for ex in generate(cfg.procedural, args.split, args.num)]
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".jsonl":
        with open(out, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        # metadata as JSON text: its keys differ between tasks, and the readers accept either form
        table = pa.Table.from_pylist([{**r, "metadata": json.dumps(r["metadata"])} for r in rows])
        pq.write_table(table, out)
    print(f"wrote {len(rows)} {cfg.procedural.task} problems ({args.split} split) to {out}")
    return 0
