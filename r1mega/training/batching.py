"""From SFT examples to megatron microbatches: the data-parallel share of a global batch, grouped
into right-padded microbatches under a sample cap and a token budget.

A global batch is a list of example indices, the same on every rank; data-parallel rank r takes
the r-th contiguous slice. Within a rank's slice, samples are grouped longest first, so similar
lengths share a microbatch and little padding is spent; a microbatch holds at most
`micro_batch_size` samples and, when `micro_batch_tokens` is set, at most that many padded tokens
(samples x padded length). Every rank of one model replica (TP/PP/CP peers) sees the same samples
and builds the same microbatches.

Label alignment: megatron's GPTModel takes `labels[t]`, the token that follows position t, and
returns the per-token loss at t. `SFTExample.loss_mask[t]` marks token t as a target, so the mask
at label position t is `loss_mask[t + 1]`; padding and the last position are never targets.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

__all__ = ["Microbatch", "dp_share", "plan_microbatches", "make_microbatch", "build_microbatches", "pad_multiple"]

Microbatch = dict
"""tokens, labels, position_ids: int64 [b, s]; loss_mask: float32 [b, s] (aligned with labels)."""


def dp_share(indices: Sequence[int], dp_rank: int, dp_size: int) -> list[int]:
    """Data-parallel rank `dp_rank`'s contiguous slice of a global batch (sizes must divide)."""
    if len(indices) % dp_size:
        raise ValueError(f"a global batch of {len(indices)} samples does not split over {dp_size} DP ranks")
    n = len(indices) // dp_size
    return list(indices[dp_rank * n : (dp_rank + 1) * n])


def pad_multiple(pad_to_multiple: int, tp: int, sequence_parallel: bool) -> int:
    """Length multiple of every microbatch: the configured one, times what SP needs (tp | length)."""
    if sequence_parallel:
        return pad_to_multiple * tp // math.gcd(pad_to_multiple, tp)
    return pad_to_multiple


def _padded(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


def plan_microbatches(
    lengths: Sequence[int],
    *,
    micro_batch_size: int,
    micro_batch_tokens: Optional[int] = None,
    multiple: int = 1,
) -> list[list[int]]:
    """Group positions 0..n-1 (by their `lengths`) into microbatches, longest first.

    Raises ValueError when one sample alone exceeds the token budget.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    groups: list[list[int]] = []
    current: list[int] = []
    width = 0  # padded length of the current group = its first (longest) sample's
    for i in order:
        need = _padded(lengths[i], multiple)
        if micro_batch_tokens is not None and need > micro_batch_tokens:
            raise ValueError(
                f"sft.micro_batch_tokens: {micro_batch_tokens} is smaller than one sample of "
                f"{lengths[i]} tokens (padded to {need})"
            )
        if current and (
            len(current) == micro_batch_size
            or (micro_batch_tokens is not None and (len(current) + 1) * width > micro_batch_tokens)
        ):
            groups.append(current)
            current = []
        if not current:
            width = need
        current.append(i)
    if current:
        groups.append(current)
    return groups


def make_microbatch(examples: Sequence, pad_id: int, multiple: int = 1) -> Microbatch:
    """Right-padded tensors for megatron's GPTModel from SFTExample-like objects."""
    width = _padded(max(len(ex.input_ids) for ex in examples), multiple)
    b = len(examples)
    tokens = torch.full((b, width), pad_id, dtype=torch.long)  # [b, s]
    labels = torch.full((b, width), pad_id, dtype=torch.long)  # [b, s]: token at t+1
    loss_mask = torch.zeros((b, width), dtype=torch.float32)  # [b, s]: is labels[t] a target
    for row, ex in enumerate(examples):
        ids = torch.as_tensor(ex.input_ids, dtype=torch.long)
        mask = torch.as_tensor(ex.loss_mask, dtype=torch.float32)
        n = ids.numel()
        tokens[row, :n] = ids
        labels[row, : n - 1] = ids[1:]
        loss_mask[row, : n - 1] = mask[1:]
    position_ids = torch.arange(width, dtype=torch.long).unsqueeze(0).expand(b, width).contiguous()  # [b, s]
    return {"tokens": tokens, "labels": labels, "loss_mask": loss_mask, "position_ids": position_ids}


def build_microbatches(
    examples: Sequence,
    *,
    pad_id: int,
    micro_batch_size: int,
    micro_batch_tokens: Optional[int] = None,
    multiple: int = 1,
) -> list[Microbatch]:
    """This rank's examples (already its DP share) as planned, padded microbatches."""
    groups = plan_microbatches(
        [len(ex.input_ids) for ex in examples],
        micro_batch_size=micro_batch_size,
        micro_batch_tokens=micro_batch_tokens,
        multiple=multiple,
    )
    return [make_microbatch([examples[i] for i in g], pad_id, multiple) for g in groups]
