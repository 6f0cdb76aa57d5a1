"""The recipe's held-out evaluation: the same files for every stage, through `run_eval`.

`eval.data: procedural` writes the held-out split of the defaults' `data.procedural` once to
runs/<recipe>/heldout/<task>_test.jsonl (the rows `r1mega data --split test` writes); a rerun
regenerates it and refuses to go on if the file on disk differs (the held-out set of earlier stages
would not be the one of later stages).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from r1mega.config import Config
from r1mega.recipe.config import RecipeConfig

__all__ = ["heldout_files", "eval_config", "greedy_config", "evaluate"]


def heldout_files(recipe: RecipeConfig, defaults_cfg: Config, *, write: bool) -> list[Path]:
    """The held-out files of the recipe (written when `write` and absent)."""
    if recipe.eval.data != "procedural":
        files = [Path(p) if Path(p).is_absolute() else Path(recipe.base_dir) / p for p in recipe.eval.data]
        for p in files:
            if not p.is_file():
                raise ValueError(f"eval.data: held-out file {p} not found")
        return files
    from r1mega.data.tasks import generate

    proc = defaults_cfg.data.procedural
    path = recipe.run_dir / "heldout" / f"{proc.task}_test.jsonl"
    text = "".join(json.dumps(ex.to_row(), ensure_ascii=False) + "\n" for ex in generate(proc, "test"))
    if path.is_file():
        if path.read_text(encoding="utf-8") != text:
            raise ValueError(f"{path}: differs from the held-out split the recipe's data section generates; "
                             "earlier stages were evaluated on another set (rerun with --from the first stage)")
    elif write:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return [path]


def eval_config(recipe: RecipeConfig) -> Any:
    from r1mega.configlib import from_dict
    from r1mega.eval.config import EvalConfig

    return from_dict(EvalConfig, recipe.eval.config, where="eval.config")


def greedy_config(recipe: RecipeConfig) -> Any:
    """The accuracy column's evaluation: one sample per prompt at temperature 0."""
    import dataclasses

    cfg = eval_config(recipe)
    changes = {"samples_per_prompt": 1, "temperature": 0.0, "pass_k": [1]}
    return dataclasses.replace(cfg, **{k: v for k, v in changes.items() if hasattr(cfg, k)})


def evaluate(recipe: RecipeConfig, model: Path, files: list[Path], out_dir: Path, run_config: Optional[Config]) -> dict:
    """run_eval into out_dir (eval.json, eval.md), and with `eval.greedy` into out_dir/greedy."""
    from r1mega.eval.runner import run_eval

    result = run_eval(eval_config(recipe), model, files, out_dir, run_config=run_config)
    if recipe.eval.greedy:
        run_eval(greedy_config(recipe), model, files, out_dir / "greedy", run_config=run_config)
    return result
