"""Stream a live sharded megatron model as HF-named full tensors, in buckets of bounded size.

`export_hf_tensors(model_chunks, bucket_bytes, model_cfg=...)` serves both the mcore -> HF tool
and rollout weight sync. Every rank calls it (it is a collective) and every rank receives every
HF tensor, in the same order and bit-identical: with a colocated engine each rank then loads what
it needs, as SGLang's colocated weight update does.

How one tensor travels (only the groups that hold a piece take part):
  1. TP: the owner stage's ranks all-gather their shards over the TP group (routed experts: over
     the expert-TP group), giving the full megatron tensor;
  2. EP: a routed expert lives on one EP rank; it broadcasts the full tensor over the EP group of
     its stage, so every rank of that stage has it;
  3. PP: the owning stage broadcasts it over the pipeline group to the other stages;
  4. the family's layout turns it into HF tensors (split fused QKV and gate/up, drop vocab padding).
DP replicas hold the same weights and run the same steps independently; nothing crosses DP.

Memory: a bucket holds at most `bucket_bytes` of HF tensors (one item larger than that comes
alone). Gathered and received tensors land in one reusable staging buffer the size of the largest
full megatron tensor M; HF tensors are copied out of it into the bucket. With a consumer that drops
each bucket before asking for the next, the extra memory per rank is therefore at most
M + max(bucket_bytes, largest item), i.e. bucket_bytes + M once the bucket is at least as large as
any tensor (measured in tests/test_convert_dist.py). Tensors in a bucket are fresh copies, never
views of parameters or of the staging buffer, so the model may change while a bucket is in use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from r1mega.convert.layouts import Layout
from r1mega.convert.live import LocalTensor, family_rules, local_tensors
from r1mega.convert.rules import match_name
from r1mega.models.config import ModelConfig

__all__ = ["export_hf_tensors", "ExportItem", "export_plan"]

NamedTensors = list[tuple[str, torch.Tensor]]


@dataclass
class ExportItem:
    """One megatron tensor of the whole model, as every rank sees it in the export plan."""

    megatron_name: str
    sort_key: tuple
    stage: int
    """Pipeline rank that holds it."""
    ep_rank: Optional[int]
    """EP rank that holds it (routed experts), None for tensors every EP rank holds."""
    full_shape: tuple[int, ...]
    dtype: torch.dtype
    tp_dim: Optional[int]
    tp_size: int
    layout: Layout
    local: Optional[LocalTensor]
    """This rank's piece, when it holds one."""

    @property
    def hf_bytes(self) -> int:
        size = self.dtype.itemsize
        total = 0
        for shape in self.layout.hf_shapes(self.full_shape).values():
            n = 1
            for d in shape:
                n *= d
            total += n * size
        return total


def _sort_key(name: str, rule_index: int, layer: Optional[int], expert: Optional[int]) -> tuple:
    """Embedding first, then layer by layer (rule order, expert id), then final norm and output."""
    if layer is not None:
        return (1, layer, rule_index, expert if expert is not None else -1)
    section = 0 if name.startswith("embedding.") else 2
    return (section, 0, rule_index, -1)


def export_plan(model_chunks, model_cfg: ModelConfig) -> list[ExportItem]:
    """The ordered list of tensors to export, identical on every rank (one all_gather_object)."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    mine = [t for t in local_tensors(model_chunks, model_cfg) if t.rule.export]
    stage = ps.get_pipeline_model_parallel_rank()
    ep_rank = ps.get_expert_model_parallel_rank()
    record = [
        (t.megatron_name, tuple(t.full_shape), str(t.tensor.dtype).removeprefix("torch."), t.tp_dim, t.tp_size)
        for t in mine
    ]
    everyone = [(stage, ep_rank, record)]
    if dist.is_initialized() and dist.get_world_size() > 1:
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, (stage, ep_rank, record))

    rules = family_rules(model_cfg)
    by_name = {t.megatron_name: t for t in mine}
    items: dict[str, ExportItem] = {}
    for owner_stage, owner_ep, rec in everyone:
        for name, shape, dtype, tp_dim, tp_size in rec:
            m = match_name(rules, name)
            assert m is not None, name  # it matched on its own rank
            item = items.get(name)
            if item is not None:
                if (item.full_shape, item.tp_dim, item.stage) != (shape, tp_dim, owner_stage):
                    raise RuntimeError(
                        f"export: ranks disagree about {name}: {item.full_shape}/{item.tp_dim}/stage "
                        f"{item.stage} vs {shape}/{tp_dim}/stage {owner_stage}"
                    )
                continue
            items[name] = ExportItem(
                megatron_name=name,
                sort_key=_sort_key(name, m.rule_index, m.layer, m.expert),
                stage=owner_stage,
                ep_rank=owner_ep if m.rule.is_expert else None,
                full_shape=shape,
                dtype=getattr(torch, dtype),
                tp_dim=tp_dim,
                tp_size=tp_size,
                layout=m.rule.layout_for(model_cfg, m.layer, m.expert),
                local=by_name.get(name),
            )
    plan = sorted(items.values(), key=lambda it: it.sort_key)
    seen: dict[str, str] = {}
    for item in plan:
        for hf in item.layout.hf_names:
            if hf in seen:
                raise RuntimeError(f"export: {hf} would come from both {seen[hf]} and {item.megatron_name}")
            seen[hf] = item.megatron_name
    return plan


class _Staging:
    """One reusable byte buffer, as large as the largest full megatron tensor of the plan, that
    every gathered or received tensor lands in. Outputs are copied out of it into the bucket, so
    the export holds at most this buffer plus one bucket, and no tensor handed to a collective is
    ever freed by a communication thread."""

    def __init__(self, plan: list[ExportItem]):
        need = max((_nbytes(it.full_shape, it.dtype) for it in plan), default=0)
        self.buffer = torch.empty(need, dtype=torch.uint8, device=_device())

    def view(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return self.buffer[: _nbytes(shape, dtype)].view(dtype).view(shape)


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    n = dtype.itemsize
    for d in shape:
        n *= d
    return n


def _gather_tp(item: ExportItem, staging: _Staging, group) -> tuple[torch.Tensor, bool]:
    """(full tensor = TP shards concatenated along the partition dim, whether it is a fresh tensor).

    Unsplit tensors are returned as they are (the parameter itself, not fresh). Split ones are
    gathered into the staging buffer as [tp, *shard]: NCCL all-gathers in place; on gloo, whose
    all-gather allocates a full-size temporary, each rank broadcasts its shard into its slot.
    """
    import torch.distributed as dist

    local = item.local.tensor.detach()
    size = item.tp_size
    if item.tp_dim is None or size == 1:
        return local, False
    stacked = staging.view((size, *local.shape), local.dtype)  # [tp, *shard]
    if dist.get_backend(group) == "gloo":
        me = dist.get_rank(group)
        for r in range(size):
            slot = stacked[r]
            if r == me:
                slot.copy_(local)
            dist.broadcast(slot, src=dist.get_global_rank(group, r), group=group)
    else:
        dist.all_gather_into_tensor(stacked.view(-1), local.contiguous().view(-1), group=group)
    if item.tp_dim == 0:
        return stacked.view(size * local.shape[0], *local.shape[1:]), False
    # [tp, ..., shard_d, ...] -> [..., tp * shard_d, ...]: a new tensor
    return torch.cat(stacked.unbind(0), dim=item.tp_dim), True


def _broadcast(tensor: Optional[torch.Tensor], item: ExportItem, staging: _Staging, src_group_rank: int, group):
    """Broadcast the full tensor from group rank `src_group_rank`; receivers get it in the staging
    buffer. Returns (tensor, fresh)."""
    import torch.distributed as dist

    if tensor is None:
        tensor = staging.view(item.full_shape, item.dtype)
    dist.broadcast(tensor, src=dist.get_global_rank(group, src_group_rank), group=group)
    return tensor


def _into_staging(full: Optional[torch.Tensor], fresh: bool, item: ExportItem, staging: _Staging):
    """A fresh tensor (the TP gather's concatenation) about to be broadcast moves into the staging
    buffer first, and the fresh one is dropped here. A collective's work object keeps a reference to
    the tensors it sends and may release it on its communication thread, after the caller let go:
    the memory would then outlive its bucket and be freed where no one accounts for it (the export's
    bound was exceeded by one such tensor in a test). The stacked shards in the staging buffer are
    no longer needed once concatenated, so the copy overwrites them."""
    if full is None or not fresh:
        return full, fresh
    view = staging.view(item.full_shape, item.dtype)
    view.copy_(full)
    return view, False


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def _full_tensor(item: ExportItem, staging: _Staging) -> tuple[torch.Tensor, bool]:
    """(full megatron tensor of `item` on this rank, whether it is a fresh tensor), via the TP
    gather, the EP broadcast and the PP broadcast."""
    from megatron.core import parallel_state as ps

    stage = ps.get_pipeline_model_parallel_rank()
    ep_rank = ps.get_expert_model_parallel_rank()
    full, fresh = None, False
    on_stage = stage == item.stage
    if on_stage and (item.ep_rank is None or item.ep_rank == ep_rank):
        assert item.local is not None, f"{item.megatron_name} should be on this rank"
        group = (
            ps.get_expert_tensor_parallel_group(check_initialized=False)
            if item.ep_rank is not None
            else ps.get_tensor_model_parallel_group()
        )
        full, fresh = _gather_tp(item, staging, group)
    if item.ep_rank is not None and on_stage and ps.get_expert_model_parallel_world_size() > 1:
        full, fresh = _into_staging(full, fresh, item, staging)
        full = _broadcast(full, item, staging, item.ep_rank, ps.get_expert_model_parallel_group())
    if ps.get_pipeline_model_parallel_world_size() > 1:
        full, fresh = _into_staging(full, fresh, item, staging)
        full = _broadcast(full if on_stage else None, item, staging, item.stage, ps.get_pipeline_model_parallel_group())
        fresh = fresh and on_stage
    assert full is not None and tuple(full.shape) == item.full_shape, item.megatron_name
    return full, fresh


def _owned(pieces: list[tuple[str, torch.Tensor]], source: torch.Tensor, fresh: bool):
    """HF tensors that share no storage with a parameter or the staging buffer."""
    if fresh:
        return pieces
    shared = source.untyped_storage().data_ptr()
    return [(n, t.clone() if t.untyped_storage().data_ptr() == shared else t) for n, t in pieces]


def export_hf_tensors(
    model_chunks,
    bucket_bytes: int,
    *,
    model_cfg: ModelConfig,
    names: Optional[str] = None,
    plan: Optional[list[ExportItem]] = None,
) -> Iterator[NamedTensors]:
    """Yield buckets [(hf_name, full HF tensor), ...] of at most `bucket_bytes` each (a tensor
    larger than that comes alone), covering the whole model once, on every rank.

    A collective: every rank of the job must call it and consume every bucket. `names` (a regular
    expression on HF names) exports only the matching tensors, with the same collectives skipped on
    all ranks. `plan`: the result of `export_plan` for these chunks, to skip its all_gather_object
    when syncing the same model repeatedly (every rank must then pass one). See the module
    docstring for who sends what and the memory bound.
    """
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes: must be >= 1, got {bucket_bytes}")
    if plan is None:
        plan = export_plan(model_chunks, model_cfg)
    if names is not None:
        wanted = re.compile(names)
        plan = [it for it in plan if any(wanted.search(n) for n in it.layout.hf_names)]
    staging = _Staging(plan)
    bucket: NamedTensors = []
    used = 0
    with torch.no_grad():
        for item in plan:
            size = item.hf_bytes
            if bucket and used + size > bucket_bytes:
                yield bucket
                bucket, used = [], 0
            full, fresh = _full_tensor(item, staging)
            bucket.extend(_owned(item.layout.to_hf(full, item.tp_size), full, fresh))
            del full
            used += size
    del staging
    if bucket:
        yield bucket
