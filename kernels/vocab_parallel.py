"""The vocabulary shard a rank holds and the collectives that combine per-token statistics.

Megatron splits the output layer's rows (the vocabulary, padded up to a multiple of 128 * TP)
evenly over the tensor-parallel group: rank r holds global rows [r * V_local, (r + 1) * V_local)
(`VocabParallelEmbedding`, `ColumnParallelLinear` with `gather_output=False`). Rows at global index
>= `vocab_size` (the real vocabulary) are padding: they hold weights but are not tokens, so they are
left out of every sum here.

Per token a rank computes, over its own columns, the running statistics of an online
log-sum-exp: the max `m`, `s = sum exp(z - m)`, `u = sum exp(z - m) * (z - m)` (for the entropy) and
the target logit `zt` (0 when the target lives on another rank). Combining ranks takes exactly two
collectives: a MAX all-reduce of `m` over [N], then one SUM all-reduce of the rescaled [s, zt(, u)]
packed into a single [k, N] tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

__all__ = ["VocabShard", "rescale_stats", "merge_split_stats", "combine_across_ranks", "all_reduce_sum"]


@dataclass(frozen=True)
class VocabShard:
    """This rank's slice of the (padded) vocabulary."""

    rank: int
    world_size: int
    start: int
    """Global index of the first local row."""
    local_rows: int
    """Rows of the local weight shard (V_local)."""
    valid_cols: int
    """Local rows that are real tokens: min(V_local, vocab_size - start), clamped at 0."""
    vocab_size: int
    """The real global vocabulary size."""

    @staticmethod
    def from_group(group: Optional[dist.ProcessGroup], local_rows: int, vocab_size: Optional[int]) -> "VocabShard":
        if group is not None and dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(group), dist.get_world_size(group)
        elif group is not None:
            raise ValueError("fused_logprob: tp_group was given but torch.distributed is not initialized")
        else:
            rank, world = 0, 1
        padded = local_rows * world
        if vocab_size is None:
            vocab_size = padded
        if not 0 < vocab_size <= padded:
            raise ValueError(
                f"fused_logprob: vocab_size={vocab_size} must be in [1, V_local * tp] = [1, {padded}] "
                f"(V_local={local_rows}, tp={world})"
            )
        start = rank * local_rows
        valid = max(0, min(local_rows, vocab_size - start))
        return VocabShard(rank, world, start, local_rows, valid, vocab_size)


def rescale_stats(
    m: torch.Tensor, s: torch.Tensor, u: Optional[torch.Tensor], m_new: torch.Tensor
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Re-express (s, u) accumulated relative to `m` relative to a larger reference `m_new`.

    s' = exp(m - m') s,  u' = exp(m - m') (u + (m - m') s). Rows with no columns (m = -inf, s = 0)
    give 0 instead of NaN; rows where every input is -inf keep m' = -inf and are handled by callers.
    """
    finite_new = torch.isfinite(m_new)
    ref = torch.where(finite_new, m_new, torch.zeros_like(m_new))
    has = s > 0
    delta = torch.where(has, m - ref, torch.zeros_like(m))  # [.., N]; -inf only where s = 0
    scale = torch.where(has, torch.exp(delta), torch.zeros_like(s))
    s_new = s * scale
    u_new = None if u is None else scale * (u + delta * s)
    return s_new, u_new


def merge_split_stats(
    m: torch.Tensor, s: torch.Tensor, u: Optional[torch.Tensor], zt: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """Merge per-split statistics [S, N] (disjoint column ranges of one rank) into [N]."""
    m_all = m.max(dim=0).values  # [N]
    s_r, u_r = rescale_stats(m, s, u, m_all.unsqueeze(0))
    return m_all, s_r.sum(0), None if u_r is None else u_r.sum(0), zt.sum(0)


def combine_across_ranks(
    shard: VocabShard,
    group: Optional[dist.ProcessGroup],
    m: torch.Tensor,
    s: torch.Tensor,
    u: Optional[torch.Tensor],
    zt: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """Global (m, s, u, zt) over the TP group: one MAX all-reduce [N], one packed SUM [k, N]."""
    if shard.world_size == 1:
        return m, s, u, zt
    m_global = m.clone()
    dist.all_reduce(m_global, op=dist.ReduceOp.MAX, group=group)
    s_r, u_r = rescale_stats(m, s, u, m_global)
    parts = [s_r, zt] if u_r is None else [s_r, zt, u_r]
    packed = torch.stack(parts)  # [k, N]: one collective for every per-token sum
    dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
    u_out = None if u_r is None else packed[2]
    return m_global, packed[0], u_out, packed[1]


def all_reduce_sum(t: torch.Tensor, group: Optional[dist.ProcessGroup]) -> torch.Tensor:
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t
