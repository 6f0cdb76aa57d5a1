"""Weight payloads for SGLang 0.5.23's `update_weights_from_tensor(load_format="flattened_bucket")`.

SGLang's contract (see docs/rollout.md): the call takes a list with exactly one serialized payload
per SGLang TP rank, indexed by that rank; TP rank i deserializes only entry i with SGLang's
`MultiprocessingSerializer` (a safe unpickler with an allow-list), and the object must be
`{"flattened_tensor": uint8 1-D tensor, "metadata": [FlattenedTensorMetadata, ...]}`, which
`FlattenedTensorBucket` turns back into HF-named views. CUDA tensors travel as CUDA IPC handles,
valid only on the producer's node, so the payload of TP rank i is made by the trainer rank
colocated with it (`RolloutGroups`), from its own copy of the bucket (`export_hf_tensors` gives
every rank every tensor), and gathered over the engine's gloo group to the engine's owner rank.

Expert tensors go only to the SGLang ranks that load them when SGLang's EP layout is the plain
one (EP rank = (tp_rank // moe_tp) % ep, experts split in contiguous blocks, no redundant experts):
SGLang's FusedMoE loader drops the others, so sending them would only cost memory.
"""

from __future__ import annotations

import re
from typing import Callable, Optional, Sequence

import torch

from r1mega.rollout.types import NamedTensors

__all__ = ["serialize_bucket", "expert_filter", "gather_rank_payloads", "payload_bytes"]

_EXPERT = re.compile(r"\.mlp\.experts\.(\d+)\.")


def serialize_bucket(named_tensors: NamedTensors) -> bytes:
    """One SGLang payload: the bucket flattened into one fresh uint8 buffer, serialized with SGLang's
    own classes (CUDA tensors become IPC handles). An empty bucket is an empty buffer with no
    metadata, which SGLang loads as nothing; every TP rank must get a payload."""
    from sglang.srt.utils import MultiprocessingSerializer
    from sglang.srt.weight_sync.tensor_bucket import FlattenedTensorBucket

    if torch.cuda.is_available():
        from sglang.srt.utils.patch_torch import monkey_patch_torch_reductions

        monkey_patch_torch_reductions()  # the device travels as its UUID, whatever CUDA_VISIBLE_DEVICES says
    if named_tensors:
        # FlattenedTensorBucket packs bytes without padding and rebuilds with `.view(dtype)`, which
        # needs each offset to be a multiple of the dtype's size: widest dtypes first guarantees it
        # (sizes are powers of two). Mixed bf16/fp32 buckets in another order fail to load.
        ordered = sorted(named_tensors, key=lambda nt: -nt[1].element_size())
        bucket = FlattenedTensorBucket(named_tensors=[(n, t.contiguous()) for n, t in ordered])
        payload = {"flattened_tensor": bucket.get_flattened_tensor(), "metadata": bucket.get_metadata()}
    else:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        payload = {"flattened_tensor": torch.empty(0, dtype=torch.uint8, device=device), "metadata": []}
    return MultiprocessingSerializer.serialize(payload)


def expert_filter(tp_size: int, ep_size: int, num_experts: Optional[int]) -> Callable[[int, str], bool]:
    """keep(tp_rank, hf_name): False only for a routed expert that SGLang's TP rank does not hold."""
    if ep_size <= 1 or not num_experts:
        return lambda tp_rank, name: True
    if tp_size % ep_size or num_experts % ep_size:
        raise ValueError(
            f"rollout.ep: {ep_size} must divide rollout.tp ({tp_size}) and the expert count ({num_experts})"
        )
    moe_tp = tp_size // ep_size
    per_rank = num_experts // ep_size

    def keep(tp_rank: int, name: str) -> bool:
        m = _EXPERT.search(name)
        if m is None:  # dense, attention, router, shared experts: every rank
            return True
        return int(m.group(1)) // per_rank == (tp_rank // moe_tp) % ep_size

    return keep


def payload_bytes(named_tensors: NamedTensors) -> int:
    return sum(t.numel() * t.element_size() for _, t in named_tensors)


def gather_rank_payloads(
    bucket: NamedTensors,
    *,
    tp_rank: int,
    tp_size: int,
    group,
    owner: int,
    keep: Callable[[int, str], bool] = lambda r, n: True,
) -> tuple[Optional[list[bytes]], int]:
    """Each rank of an engine's rollout group serializes its share of `bucket` for its SGLang TP rank
    and the owner (global rank) receives them in TP-rank order. Returns (payloads on the owner else
    None, bytes this rank put in its payload). `group`: the engine's gloo group (None: one rank)."""
    import torch.distributed as dist

    mine = [(n, t) for n, t in bucket if keep(tp_rank, n)]
    payload = serialize_bucket(mine)
    if tp_size == 1:
        return [payload], payload_bytes(mine)
    received: Optional[Sequence] = [None] * tp_size if dist.get_rank() == owner else None
    dist.gather_object((tp_rank, payload), received, dst=owner, group=group)
    if received is None:
        return None, payload_bytes(mine)
    ordered = [p for _, p in sorted(received, key=lambda x: x[0])]
    assert [r for r, _ in sorted(received, key=lambda x: x[0])] == list(range(tp_size))
    return ordered, payload_bytes(mine)
