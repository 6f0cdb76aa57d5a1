"""Train/held-out split by a hash of the problem, so the two splits are disjoint by construction.

A problem's split depends only on its canonical key (e.g. the sorted countdown numbers and the
target), never on the seed or on generation order: every generator run, with any seed, agrees on
which problems are held out, and a train set can never contain a test problem.
"""

from __future__ import annotations

import hashlib
from typing import Literal

Split = Literal["train", "test"]
SPLITS: tuple[str, ...] = ("train", "test")


def heldout_score(task: str, key: str) -> float:
    """A uniform number in [0, 1) determined by (task, key)."""
    digest = hashlib.sha256(f"{task}\x00{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(task: str, key: str, heldout_fraction: float) -> Split:
    """"test" for the held-out share of all problems, "train" for the rest."""
    return "test" if heldout_score(task, key) < heldout_fraction else "train"
