"""Prompts of the tiny final-RL stage: the tiny task's reasoning prompts (rule-checked) mixed with the
embedded general prompts (RM-scored; their `answer` is kept for the held-out hidden-rule check,
never for a reward).

    python -m r1mega.rm.final_rl_data examples/configs/tiny_final_rl.yaml runs/tiny_final_rl_data

writes train.jsonl and test.jsonl there (the files tiny_final_rl.yaml reads), with the general
share of `--general-fraction` (default one half).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

__all__ = ["final_rl_rows", "main"]


def final_rl_rows(data_cfg, split: str, general_fraction: float, seed: int = 0) -> list[dict]:
    """Reasoning rows of the procedural task plus general rows, shuffled with a fixed seed."""
    import dataclasses

    from r1mega.data.tasks import generate
    from r1mega.rm.tiny_data import tiny_prompts

    procedural = dataclasses.replace(data_cfg.procedural)
    reasoning = [ex.to_row() for ex in generate(procedural, split)]
    n_general = round(len(reasoning) * general_fraction / max(1e-9, 1 - general_fraction))
    general = [
        {"prompt": p.prompt, "answer": p.answer, "task": "general", "prompt_type": "general"}
        for p in tiny_prompts(split, n_general, seed)
    ]
    rows = [{**r, "prompt_type": "reasoning"} for r in reasoning] + general
    random.Random(f"{seed}-{split}").shuffle(rows)
    return rows


def main(argv=None) -> int:
    from r1mega.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("out_dir")
    parser.add_argument("--general-fraction", type=float, default=0.5)
    args = parser.parse_args(argv)
    cfg = load_config(args.config, ["data.source=procedural", "data.train_files=[]", "data.test_files=[]"])
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        rows = final_rl_rows(cfg.data, split, args.general_fraction, cfg.data.seed)
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        print(f"{out / f'{split}.jsonl'}: {len(rows)} prompts ({sum(r['prompt_type'] == 'general' for r in rows)} general)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
