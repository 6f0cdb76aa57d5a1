"""A resumable prompt sampler: seeded shuffle per epoch, position saved in checkpoints.

`next_indices(n)` hands out the next n dataset indices, crossing into the next epoch (a fresh
permutation) when one runs out, so a batch never has to be dropped. The order depends only on
(seed, epoch), which is why `state_dict()` needs just the epoch and the position in it: a run that
resumes from a checkpoint sees exactly the prompts the uninterrupted run would have seen.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["PromptSampler"]


class PromptSampler:
    def __init__(self, num_examples: int, *, seed: int = 0, shuffle: bool = True):
        if num_examples < 1:
            raise ValueError(f"PromptSampler: the dataset is empty (num_examples={num_examples})")
        self.num_examples = num_examples
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_examples)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)

    def next_indices(self, n: int) -> list[int]:
        """The next `n` indices (may span an epoch boundary)."""
        if n < 0:
            raise ValueError(f"next_indices: n must be >= 0, got {n}")
        out: list[int] = []
        while len(out) < n:
            take = min(n - len(out), self.num_examples - self.position)
            out.extend(int(i) for i in self._order[self.position : self.position + take])
            self.position += take
            if self.position == self.num_examples:
                self.epoch += 1
                self.position = 0
                self._order = self._permutation(self.epoch)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_examples": self.num_examples,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume; the dataset size, seed and shuffle must match the saving run's."""
        for key in ("num_examples", "seed", "shuffle"):
            if state.get(key) != getattr(self, key):
                raise ValueError(
                    f"PromptSampler.load_state_dict: checkpoint has {key}={state.get(key)!r}, this run has "
                    f"{getattr(self, key)!r}; the data position cannot be resumed on a different dataset/order"
                )
        if not 0 <= state["position"] < self.num_examples or state["epoch"] < 0:
            raise ValueError(f"PromptSampler.load_state_dict: bad position {state['epoch']}:{state['position']}")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._order = self._permutation(self.epoch)
