"""Procedural tasks with verifiable answers: the embedded default's prompts and SFT traces.

`generate(config, split, n)` draws problems from a seeded generator and keeps those whose hash puts
them in `split` (see `split.py`), so train and test never share a problem. Each example carries a
worked solution in the `<think>...</think> <answer>...</answer>` format; a fixed share of them
(`wrong_solution_fraction`) contains one realistic mistake.
"""

from __future__ import annotations

import random

from r1mega.data.config import ProceduralConfig
from r1mega.data.tasks import arithmetic, countdown
from r1mega.data.tasks.base import TaskExample, format_solution
from r1mega.data.tasks.split import SPLITS, Split, split_of

__all__ = ["TaskExample", "format_solution", "generate", "split_of", "SPLITS", "TASKS"]

TASKS: tuple[str, ...] = (countdown.TASK, arithmetic.TASK)


def _sample(rng: random.Random, cfg: ProceduralConfig) -> TaskExample:
    if cfg.task == countdown.TASK:
        return countdown.sample_problem(rng, cfg.countdown)
    if cfg.task == arithmetic.TASK:
        return arithmetic.sample_problem(rng, cfg.arithmetic)
    raise ValueError(f"data.procedural.task: unknown task {cfg.task!r}; known: {list(TASKS)}")


def _corrupt(example: TaskExample, rng: random.Random, cfg: ProceduralConfig) -> TaskExample:
    if cfg.task == countdown.TASK:
        return countdown.corrupt(example, rng, cfg.countdown)
    return arithmetic.corrupt(example, rng)


def generate(cfg: ProceduralConfig, split: Split, n: int | None = None) -> list[TaskExample]:
    """`n` problems of `split` (default: the config's train_size/test_size), deterministic in cfg.seed.

    With `cfg.unique`, a problem appears at most once; if the knobs allow too few distinct problems
    this raises ValueError instead of looping forever.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if n is None:
        n = cfg.train_size if split == "train" else cfg.test_size
    # A string seed is hashed with SHA-512 by `random`, so this is stable across runs and platforms.
    rng = random.Random(f"r1mega:{cfg.task}:{split}:{cfg.seed}")
    examples: list[TaskExample] = []
    seen: set[str] = set()
    max_draws = 100 * n + 1000
    draws = 0
    while len(examples) < n:
        draws += 1
        if draws > max_draws:
            raise ValueError(
                f"data.procedural: found only {len(examples)} of {n} distinct {cfg.task} problems for "
                f"split {split!r} in {max_draws} draws; make the task harder (more digits/numbers), "
                "ask for fewer problems, or set unique: false"
            )
        ex = _sample(rng, cfg)
        if split_of(ex.task, ex.key, cfg.heldout_fraction) != split:
            continue
        if cfg.unique:
            if ex.key in seen:
                continue
            seen.add(ex.key)
        examples.append(ex)
    # Exactly round(n * fraction) solutions are made wrong, chosen at random.
    n_wrong = round(n * cfg.wrong_solution_fraction)
    for i in rng.sample(range(n), n_wrong):
        examples[i] = _corrupt(examples[i], rng, cfg)
    return examples
