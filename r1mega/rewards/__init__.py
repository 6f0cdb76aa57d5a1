"""Rule-based rewards: accuracy (math, countdown, arithmetic, custom tasks), format, language.

A RewardFn is `(sample, reference) -> float | dict[str, float]` (see `registry.py` for the exact
contract and custom functions by import path). `RewardPool(cfg).score(samples, references)` computes
every configured component per sample in worker processes with a hard timeout per check and returns
one dict per sample: `reward` (weighted sum) and each component's value (`suite.py`). How answers
are read from a completion, including several answers and text outside the tags: `parse.py`.
"""
