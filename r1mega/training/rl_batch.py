"""Rollout samples -> padded microbatches for the RL trainer.

A `Trajectory` is one prompt + response with everything the loss needs per response token
(rollout log-probs, and old/reference log-probs once computed) and its advantage. Microbatches are
planned by the same token-budget rule as supervised training (`plan_microbatches`): longest first,
at most `micro_batch_size` sequences and `micro_batch_tokens` padded tokens each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from r1mega.training.batching import _padded, plan_microbatches

__all__ = ["Trajectory", "make_rl_microbatch", "build_rl_microbatches", "IGNORE_INDEX"]

IGNORE_INDEX = -100


@dataclass
class Trajectory:
    prompt_token_ids: list[int]
    response_token_ids: list[int]
    rollout_logprobs: list[float]
    advantage: float = 0.0
    reward: float = 0.0
    index: int = 0
    """Position in the step's rollout batch (old/ref log-probs are stored by it)."""
    old_logprobs: Optional[list[float]] = None
    ref_logprobs: Optional[list[float]] = None
    extra: dict = field(default_factory=dict)

    @property
    def length(self) -> int:
        return len(self.prompt_token_ids) + len(self.response_token_ids)


def make_rl_microbatch(items: Sequence[Trajectory], pad_id: int, multiple: int = 1) -> dict:
    """Right-padded tensors: tokens/position_ids [b, s]; per response token [b, L]: resp_pos (the
    position whose hidden state predicts it), resp_targets (-100 on padding), resp_mask, rollout_logp,
    old_logp / ref_logp (when every item has them); advantages [b]; index [b]."""
    width = _padded(max(t.length for t in items), multiple)
    length = max(max(len(t.response_token_ids) for t in items), 1)
    b = len(items)
    tokens = torch.full((b, width), pad_id, dtype=torch.long)  # [b, s]
    resp_pos = torch.zeros((b, length), dtype=torch.long)  # [b, L]
    targets = torch.full((b, length), IGNORE_INDEX, dtype=torch.long)  # [b, L]
    mask = torch.zeros((b, length), dtype=torch.float32)  # [b, L]
    rollout = torch.zeros((b, length), dtype=torch.float32)  # [b, L]
    old = torch.zeros((b, length), dtype=torch.float32) if all(t.old_logprobs is not None for t in items) else None
    ref = torch.zeros((b, length), dtype=torch.float32) if all(t.ref_logprobs is not None for t in items) else None
    for row, t in enumerate(items):
        p, r = len(t.prompt_token_ids), len(t.response_token_ids)
        if p == 0:
            raise ValueError(f"trajectory {t.index}: empty prompt")
        tokens[row, :p] = torch.as_tensor(t.prompt_token_ids, dtype=torch.long)
        if r == 0:
            continue
        tokens[row, p : p + r] = torch.as_tensor(t.response_token_ids, dtype=torch.long)
        resp_pos[row, :r] = torch.arange(p - 1, p - 1 + r)
        targets[row, :r] = torch.as_tensor(t.response_token_ids, dtype=torch.long)
        mask[row, :r] = 1.0
        rollout[row, :r] = torch.as_tensor(t.rollout_logprobs, dtype=torch.float32)
        if old is not None:
            old[row, :r] = torch.as_tensor(t.old_logprobs, dtype=torch.float32)
        if ref is not None:
            ref[row, :r] = torch.as_tensor(t.ref_logprobs, dtype=torch.float32)
    batch = {
        "tokens": tokens,
        "position_ids": torch.arange(width, dtype=torch.long).unsqueeze(0).expand(b, width).contiguous(),  # [b, s]
        "resp_pos": resp_pos,
        "resp_targets": targets,
        "resp_mask": mask,
        "rollout_logp": rollout,
        "advantages": torch.tensor([t.advantage for t in items], dtype=torch.float32),  # [b]
        "index": torch.tensor([t.index for t in items], dtype=torch.long),  # [b]
    }
    routed = [t.extra.get("routed_experts") for t in items]
    if all(r is not None for r in routed):
        batch["routed_experts"] = _routed_experts(items, routed, width)
    if old is not None:
        batch["old_logp"] = old
    if ref is not None:
        batch["ref_logp"] = ref
    return batch


def _routed_experts(items: Sequence[Trajectory], routed: list, width: int) -> torch.Tensor:
    """[b, s, layers, top_k] experts per position for routing replay: the engine's rows for the
    positions it fed (prompt + response - 1); the last token and padding, whose outputs no loss
    reads, take experts 0..top_k-1 (any valid choice gives the same loss)."""
    first = routed[0]
    layers, top_k = first.shape[1], first.shape[2]
    out = torch.arange(top_k, dtype=torch.int32).expand(len(items), width, layers, top_k).clone()
    for row, (t, r) in enumerate(zip(items, routed)):
        fed = t.length - 1
        if tuple(r.shape) != (fed, layers, top_k):
            raise ValueError(
                f"trajectory {t.index}: routed_experts {tuple(r.shape)}, expected {(fed, layers, top_k)} "
                "(prompt + response - 1 tokens)"
            )
        out[row, :fed] = r  # dense layers' columns stay -1: a router that finds one there raises
    return out


def build_rl_microbatches(
    items: Sequence[Trajectory],
    *,
    pad_id: int,
    micro_batch_size: int,
    micro_batch_tokens: Optional[int] = None,
    multiple: int = 1,
) -> list[dict]:
    """This rank's trajectories as planned, padded microbatches (empty list for no items)."""
    if not items:
        return []
    groups = plan_microbatches(
        [t.length for t in items],
        micro_batch_size=micro_batch_size,
        micro_batch_tokens=micro_batch_tokens,
        multiple=multiple,
    )
    return [make_rl_microbatch([items[i] for i in g], pad_id, multiple) for g in groups]
