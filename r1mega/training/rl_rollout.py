"""The trainer's view of rollout across the job: one engine per rollout group, rewards on rank 0.

`JobEngine.generate` and `SharedRewards.score` are collectives that every rank calls in the same
order with the same arguments: the first splits the prompts over all engines and gives every rank
every sample (`generate_across_engines`), the second scores on rank 0's reward pool and broadcasts
the scores. With both, `RolloutCollector` runs unchanged on every rank and computes the same
trajectories everywhere (its sampler and dynamic-sampling decisions see identical data), so each DP
rank takes its share without a broadcast of the batch.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from r1mega.rollout.orchestration import RolloutGroups, generate_across_engines
from r1mega.rollout.types import Sample, SamplingParams

__all__ = ["JobEngine", "SharedRewards"]


class JobEngine:
    """All rollout engines of the job behind one `generate` (a collective)."""

    def __init__(self, engine, groups: RolloutGroups):
        """`engine`: this rank's engine when it owns one, else None."""
        self.engine = engine
        self.groups = groups

    def generate(self, prompts_token_ids: Sequence[Sequence[int]], sampling: SamplingParams) -> list[Sample]:
        return generate_across_engines(self.engine, self.groups, prompts_token_ids, sampling)

    def update_weights(self, named_tensor_buckets) -> int:
        """Every rank consumes the export (a collective); engine owners load it. Returns the bytes of
        HF tensors this rank received (the whole model: the sync's size, logged per step)."""
        counted = [0]

        def counting():
            for bucket in named_tensor_buckets:
                counted[0] += sum(t.numel() * t.element_size() for _, t in bucket)
                yield bucket

        if self.engine is not None:
            self.engine.update_weights(counting())
        else:
            for _ in counting():
                pass
        return counted[0]


class SharedRewards:
    """Scores on rank 0's reward pool, the same list on every rank (a collective)."""

    def __init__(self, pool: Optional[Any]):
        self.pool = pool

    def score(self, samples: Sequence[Any], references: Sequence[dict]) -> list[dict[str, float]]:
        import torch.distributed as dist

        box = [self.pool.score(samples, references) if dist.get_rank() == 0 else None]
        if dist.get_world_size() > 1:
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None
