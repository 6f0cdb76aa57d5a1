"""Weight sync into SGLang engines across the job: export -> per-TP-rank payloads -> push, per bucket.

    stats = push_to_sglang(export_hf_tensors(...), engine, groups, keep=expert_filter(...), version=step)

Every rank of the job calls it (the export is a collective). For each bucket, every rank of a
rollout group serializes its share for its SGLang TP rank and the owner gathers them
(`gather_rank_payloads`); the owner's `SGLangEngine.push_weights` loads the bucket before the next
one is asked for. A barrier over the group after each load keeps every producer at one bucket:
the extra memory of a sync is the export's bound (one bucket plus the largest tensor being
gathered, docs/conversion.md) plus that bucket's flattened copy. Each bucket's tensors are fresh
and dropped after its call, then `torch.cuda.ipc_collect()` releases the IPC references.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

import torch

from r1mega.rollout.orchestration import RolloutGroups
from r1mega.rollout.sglang_payloads import gather_rank_payloads
from r1mega.rollout.types import NamedTensors

__all__ = ["push_to_sglang"]


def _ipc_collect() -> None:
    if torch.cuda.is_available():
        torch.cuda.ipc_collect()


def push_to_sglang(
    buckets: Iterable[NamedTensors],
    engine,
    groups: RolloutGroups,
    *,
    version: str,
    keep: Callable[[int, str], bool] = lambda r, n: True,
) -> dict[str, float]:
    """One sync (see the module docstring); returns {"sync_bytes": bytes this rank serialized,
    "sync_s": seconds, "sync_buckets": buckets}, the same keys on every rank."""
    import torch.distributed as dist

    start = time.perf_counter()
    sent = [0, 0]  # bytes, buckets

    def payload_stream():
        for bucket in buckets:
            payloads, nbytes = gather_rank_payloads(
                bucket, tp_rank=groups.tp_rank, tp_size=groups.tp, group=groups.group, owner=groups.owner, keep=keep
            )
            del bucket
            sent[0] += nbytes
            sent[1] += 1
            if payloads is not None:
                yield payloads  # the owner loads it before coming back here
            del payloads
            _ipc_collect()
            if groups.tp > 1:
                dist.barrier(group=groups.group)  # the bucket is loaded: everyone moves on together

    if groups.is_owner:
        if engine is None:
            raise RuntimeError(f"rank {groups.rank} owns engine {groups.engine} but has none")
        engine.push_weights(payload_stream(), version)
    else:
        for _ in payload_stream():
            pass
    _ipc_collect()
    return {"sync_bytes": float(sent[0]), "sync_s": time.perf_counter() - start, "sync_buckets": float(sent[1])}
