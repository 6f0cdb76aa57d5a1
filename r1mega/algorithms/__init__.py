"""RL algorithms: presets (GRPO, Dr. GRPO, DAPO, GSPO, CISPO, RLOO, REINFORCE++) as a config section,
and the reward shaping / advantage functions the RL loop applies before the policy loss.

The config names import without torch (config loading stays torch-free); the shaping functions
load torch on first use.
"""

from r1mega.algorithms.config import ALGORITHMS, PRESETS, AlgorithmConfig, Preset, ResolvedAlgorithm

_SHAPING = ("overlong_penalty", "kl_reward_penalty", "informative_groups", "compute_advantages")

__all__ = ["ALGORITHMS", "PRESETS", "AlgorithmConfig", "Preset", "ResolvedAlgorithm", *_SHAPING]


def __getattr__(name: str):
    if name in _SHAPING:
        from r1mega.algorithms import shaping

        return getattr(shaping, name)
    raise AttributeError(f"module 'r1mega.algorithms' has no attribute {name!r}")
