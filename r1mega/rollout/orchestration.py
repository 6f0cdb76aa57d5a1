"""Rollout across the whole job: one engine per rollout group of ranks, prompts split over engines.

    groups = RolloutGroups.current(tp=cfg.rollout.tp)     # collective: makes one gloo group per engine
    engine = make_engine(...) if groups.is_owner else None
    samples = generate_across_engines(engine, groups, prompts, sampling)   # collective

A rollout group is `rollout.tp` consecutive global ranks (the GPUs one SGLang engine spans, its TP
ranks in order; independent of the training layout). Its first rank owns the engine. A step's
prompts are split into contiguous, balanced slices, one per engine; engines generate concurrently
(each on its own ranks), and one all_gather_object gives every rank every sample, in prompt order,
so each DP rank takes its share from the same list. Sample i of the step is seeded by (seed, i)
whichever engine draws it (`SamplingParams.first_sample_index`), so the result does not depend on
the number of engines. The built-in engine runs under the same orchestration on CPU (gloo).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Optional, Sequence

from r1mega.rollout.types import Sample, SamplingParams

__all__ = ["RolloutGroups", "split_evenly", "generate_across_engines"]


def split_evenly(count: int, parts: int) -> list[tuple[int, int]]:
    """[start, end) of `parts` contiguous slices of range(count), sizes differing by at most one."""
    base, extra = divmod(count, parts)
    out, start = [], 0
    for p in range(parts):
        end = start + base + (1 if p < extra else 0)
        out.append((start, end))
        start = end
    return out


@dataclass(frozen=True)
class RolloutGroups:
    world_size: int
    tp: int
    rank: int
    gloo_groups: tuple = field(default=(), compare=False, repr=False)
    """One process group per engine (None for single-rank engines), indexed by engine."""

    def __post_init__(self):
        if self.tp < 1 or self.world_size % self.tp:
            raise ValueError(f"rollout.tp: {self.tp} must be >= 1 and divide the job's {self.world_size} ranks")

    @classmethod
    def current(cls, tp: int) -> "RolloutGroups":
        """The layout of the running job; a collective (every rank creates every engine's group)."""
        import torch.distributed as dist

        world, rank = dist.get_world_size(), dist.get_rank()
        layout = cls(world_size=world, tp=tp, rank=rank)
        groups = []
        for e in range(layout.num_engines):
            ranks = list(layout.ranks_of(e))
            groups.append(dist.new_group(ranks, backend="gloo") if len(ranks) > 1 else None)
        return replace(layout, gloo_groups=tuple(groups))

    @property
    def num_engines(self) -> int:
        return self.world_size // self.tp

    @property
    def engine(self) -> int:
        """The engine this rank's GPU serves."""
        return self.rank // self.tp

    @property
    def tp_rank(self) -> int:
        """This rank's SGLang TP rank in its engine."""
        return self.rank % self.tp

    def owner_of(self, engine: int) -> int:
        return engine * self.tp

    @property
    def owner(self) -> int:
        return self.owner_of(self.engine)

    @property
    def is_owner(self) -> bool:
        return self.rank == self.owner

    def ranks_of(self, engine: int) -> range:
        return range(engine * self.tp, (engine + 1) * self.tp)

    @property
    def group(self) -> Any:
        return self.gloo_groups[self.engine] if self.gloo_groups else None


def generate_across_engines(
    engine, groups: RolloutGroups, prompts: Sequence[Sequence[int]], sampling: SamplingParams
) -> list[Sample]:
    """Every rank passes the step's whole prompt list; engine owners generate their slice; every rank
    returns all samples in prompt order. A collective over the job (one all_gather_object)."""
    import torch.distributed as dist

    if sampling.seed is None:
        raise ValueError("generate_across_engines: sampling.seed must be set (engines must agree on it)")
    start, end = split_evenly(len(prompts), groups.num_engines)[groups.engine]
    mine: Optional[list[Sample]] = None
    if groups.is_owner:
        if engine is None:
            raise RuntimeError(f"rank {groups.rank} owns engine {groups.engine} but has none")
        mine = engine.generate(prompts[start:end], replace(sampling, first_sample_index=start)) if end > start else []
    if groups.world_size == 1:
        return list(mine)
    everyone: list = [None] * groups.world_size
    dist.all_gather_object(everyone, (groups.engine, mine) if groups.is_owner else None)
    by_engine = {e: s for e, s in (x for x in everyone if x is not None)}
    if sorted(by_engine) != list(range(groups.num_engines)):
        raise RuntimeError(f"generate_across_engines: samples from engines {sorted(by_engine)} only")
    samples = [s for e in range(groups.num_engines) for s in by_engine[e]]
    if len(samples) != len(prompts):
        raise RuntimeError(f"generate_across_engines: {len(samples)} samples for {len(prompts)} prompts")
    return samples
