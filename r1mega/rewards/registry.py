"""Custom reward functions named by import path: `package.module:function`.

The function must have the RewardFn signature

    def my_reward(sample, reference) -> float | dict[str, float]

`sample` has the fields of r1mega.rollout.types.Sample (`response_text`, `prompt_token_ids`,
`response_token_ids`, `finish_reason`, ...; inside reward workers it is a torch-free `SampleView`
with the same fields). `reference` is the dataset row's reference dict (`answer`, `task`,
`metadata`, `prompt`, `response_prefix`, `source`). A dict result must hold "score" (the value that
is weighted); its other keys are logged as `component/key`. The module must be importable in a fresh
process (the reward workers import it themselves), so define it at module level, not in a closure.
"""

from __future__ import annotations

import importlib
from typing import Callable

from r1mega.rewards.config import IMPORT_PATH_RE

__all__ = ["load_reward_fn"]


def load_reward_fn(path: str, where: str = "reward function") -> Callable:
    """Import `package.module:function`; ValueError naming `where` and the path when it cannot."""
    if not IMPORT_PATH_RE.match(path):
        raise ValueError(f"{where}: {path!r} is not an import path 'package.module:function'")
    module_name, attr = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"{where}: cannot import module {module_name!r} ({e})") from e
    fn = getattr(module, attr, None)
    if fn is None:
        raise ValueError(f"{where}: module {module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise ValueError(f"{where}: {path!r} is not callable")
    return fn
