"""How much host memory a checkpoint save or load may add to a rank, and what keeps it there.

Measured cause (megatron-core 0.16.1, torch_dist format, distributed optimizer, fully_reshardable):
(1) `DistributedOptimizer.get_parameter_state_dp_zero` copies the main parameters and both Adam
moments of the whole gradient buffer into new flat "world" tensors on every rank (even at DP=1),
to save and to load; (2) the torch_dist writer (`FileSystemWriterAsync.prepare_write_data`) clones
every CPU tensor that is a view of a larger storage (torch.save would write the whole storage):
the slices of (1), the parameters (views of DDP's parameter buffer), the gated-MLP fc1 halves;
(3) its results queue comes from a spawn-context Manager process; (4) a load concatenates the fc1
halves into new tensors. Before: a save added 2.4-2.8x the rank's state (docs/checkpoints.md).

Instead, with the files on disk unchanged (same keys, shapes, dtypes, one main replica per shard):
- `fully_reshardable_without_copies`: per-parameter optimizer tensors are views of the
  optimizer's own state; a parameter split between DP ranks is assembled on its first owner
  (point-to-point, only those parameters); a load reads straight into the optimizer's state.
- `writes_without_clones`: the writer sees each contiguous view as a tensor whose storage is
  exactly its bytes (the same memory), and reports through an in-process queue.
- `merges_in_place`: fc1 halves read into the destination are not concatenated again.

The bound, for memory planning (r1mega.training.checkpoint_budget, re-exported here): a save or
load adds at most SAVE_OVERHEAD_FRACTION x the rank's training state + SAVE_OVERHEAD_BYTES.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import queue
from collections import ChainMap
from typing import Optional

import torch

from r1mega.training.checkpoint_budget import SAVE_OVERHEAD_BYTES, SAVE_OVERHEAD_FRACTION, save_transient_bytes
from r1mega.training.host_memory import state_bytes

__all__ = [
    "training_state_bytes",
    "save_transient_bytes",
    "SAVE_OVERHEAD_FRACTION",
    "SAVE_OVERHEAD_BYTES",
    "fully_reshardable_without_copies",
    "writes_without_clones",
    "exact_storage_alias",
    "merges_in_place",
]

logger = logging.getLogger(__name__)


def training_state_bytes(model_chunks: list, optimizer=None) -> int:
    """Bytes of a rank's training state: parameters, gradient buffers (megatron's main_grad) and
    the optimizer's tensors (main parameters, moments), storages shared between them counted once."""
    tensors = []
    for chunk in model_chunks:
        for p in chunk.parameters():
            tensors.append(p)
            if getattr(p, "main_grad", None) is not None:
                tensors.append(p.main_grad)
    if optimizer is not None:
        for part in getattr(optimizer, "chained_optimizers", None) or [optimizer]:
            inner = getattr(part, "optimizer", None)
            if isinstance(inner, torch.optim.Optimizer):
                tensors += [p for g in inner.param_groups for p in g["params"]]
                tensors += [v for s in inner.state.values() for v in s.values() if torch.is_tensor(v)]
    return state_bytes(tensors)


# ------------------------------------------------------------------------------------------------
# the writer: no clones of views
# ------------------------------------------------------------------------------------------------


def exact_storage_alias(tensor: torch.Tensor) -> torch.Tensor:
    """The same memory as a contiguous CPU view, as a tensor whose storage is exactly its bytes
    (torch.save writes a tensor's whole storage: of a view, the larger tensor behind it). Other
    tensors are returned as they are."""
    t = tensor.detach()
    if t.device.type != "cpu" or not t.is_contiguous() or t.numel() == 0:
        return tensor
    if t.untyped_storage().nbytes() == t.numel() * t.element_size():
        return tensor
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: go through int16, the same bits
        return torch.from_numpy(t.view(torch.int16).numpy()).view(torch.bfloat16)
    try:
        return torch.from_numpy(t.numpy())
    except TypeError:  # a dtype numpy cannot hold: leave it to the writer (it clones)
        return tensor


class _AliasingPlanner:
    """A save planner whose resolved tensors are exact-storage aliases (everything else delegated)."""

    def __init__(self, planner):
        self._planner = planner

    def resolve_data(self, item):
        data = self._planner.resolve_data(item)
        return exact_storage_alias(data) if torch.is_tensor(data) else data

    def __getattr__(self, name):
        return getattr(self._planner, name)


@contextlib.contextmanager
def writes_without_clones():
    """For megatron-core 0.16.1's synchronous torch_dist save: `FileSystemWriterAsync.prepare_write_data`
    clones each CPU tensor that is a view of a larger storage (`_clone_if_needed`), a full copy of
    the parameters and of everything sliced from flat buffers. Within this context the writer
    the strategy builds resolves tensors through `_AliasingPlanner`, so those checks find exact
    storages and nothing is cloned; the bytes written are the same. Checked: the writer still has
    that method and its clone, else nothing is changed (and the save simply costs more memory)."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async
    from megatron.core.dist_checkpointing.strategies import torch as torch_strategy

    base = filesystem_async.FileSystemWriterAsync
    known = "_clone_if_needed" in inspect.getsource(base.prepare_write_data)
    if not known or torch_strategy.FileSystemWriterAsync is not base:
        logger.warning("megatron's torch_dist writer is not the one r1mega knows: views are cloned during saves")
        yield
        return

    class AliasingWriter(base):
        def prepare_write_data(self, plan, planner):
            return super().prepare_write_data(plan, _AliasingPlanner(planner))

    # The writer reports its results through a module-level queue that megatron creates with a
    # spawn-context Manager(): a server process (a fresh interpreter re-importing __main__, ~200 MB
    # and ~10 s on 2 CPU cores, alive until the job ends) that only an asynchronous save needs.
    # r1mega saves synchronously: the results never leave this process, so a plain queue serves.
    own_queue = filesystem_async._results_queue is None
    if own_queue:
        filesystem_async._results_queue = queue.Queue()
    torch_strategy.FileSystemWriterAsync = AliasingWriter
    try:
        yield
    finally:
        torch_strategy.FileSystemWriterAsync = base
        if own_queue:
            filesystem_async._results_queue = None


# ------------------------------------------------------------------------------------------------
# loading: factories merged where they were read
# ------------------------------------------------------------------------------------------------


def _loaded_in_place(sub_state, data: torch.Tensor) -> bool:
    """The factory's pieces, as loaded, are distinct views that tile `data` exactly."""
    pieces = []

    def visit(obj):
        if torch.is_tensor(obj):
            pieces.append(obj)
        elif isinstance(obj, dict):
            for v in obj.values():
                visit(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                visit(v)

    visit(sub_state)
    ptr = data.untyped_storage().data_ptr()
    return (
        bool(pieces)
        and all(t.untyped_storage().data_ptr() == ptr for t in pieces)
        and len({t.data_ptr() for t in pieces}) == len(pieces)
        and sum(t.numel() for t in pieces) == data.numel()
    )


def merges_in_place(sharded_state_dict) -> None:
    """Loading a ShardedTensorFactory (megatron's gated-MLP fc1 halves, per parameter and per Adam
    moment) reads each piece into a view of the destination tensor, then `merge_fn` concatenates
    the pieces into a new tensor: a copy of every fc1 weight and moment, held until the load
    returns (~40% of a 0.5B model's weights). When the pieces were read in place, the destination
    already holds the merged value: the merge returns it instead of concatenating."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensorFactory

    for factory in nested_values(sharded_state_dict):
        if not isinstance(factory, ShardedTensorFactory) or not torch.is_tensor(factory.data):
            continue

        def merge(sub_state, _merge=factory.merge_fn, _data=factory.data):
            return _data if _loaded_in_place(sub_state, _data) else _merge(sub_state)

        factory.merge_fn = merge


# ------------------------------------------------------------------------------------------------
# the distributed optimizer's fully_reshardable state without world buffers
# ------------------------------------------------------------------------------------------------

_WRITTEN_FOR = "0.16.1"  # megatron-core version whose fully_reshardable files _param_state reproduces
_STATE_KEYS = ("param", "exp_avg", "exp_avg_sq")  # what megatron's world tensors hold, in its order


def _supported(part) -> bool:
    from megatron.core import parallel_state as ps

    if part.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8 or part.ddp_config.use_megatron_fsdp:
        return False
    if part.data_parallel_group.size() != ps.get_data_parallel_world_size(with_context_parallel=True):
        return False  # several optimizer instances: the model's replica ids count another group
    return all(len(maps) == 1 for maps in part.gbuf_ranges)


def _owners(buffer, bucket_id: int, start: int, end: int, dp: int) -> list[tuple[int, int, int]]:
    """(DP rank, first, last) of each rank holding part of buffer range [start, end), in param
    coordinates: megatron splits each bucket into `dp` equal contiguous shards."""
    bucket = buffer.buckets[bucket_id]
    shard = bucket.grad_data.numel() // dp
    out = []
    for r in range(dp):
        lo, hi = bucket.offset + r * shard, bucket.offset + (r + 1) * shard
        a, b = max(start, lo), min(end, hi)
        if a < b:
            out.append((r, a - start, b - start))
    return out


def _local_states(part, model_param) -> dict[str, torch.Tensor]:
    tensors = part._get_main_param_and_optimizer_states(model_param)
    return {k: tensors[k] for k in _STATE_KEYS}


def _assemble(part, model_param, owners, numel: int, like: Optional[dict]) -> Optional[dict]:
    """A parameter split between DP ranks, gathered on its first owner (None elsewhere)."""
    import torch.distributed as dist

    group = part.data_parallel_group
    ranks = dist.get_process_group_ranks(group)
    me = group.rank()
    first = owners[0][0]
    if me == first:
        device = like["param"].device
        full = {k: torch.empty(numel, dtype=torch.float32, device=device) for k in _STATE_KEYS}
        for r, a, b in owners:
            for k in _STATE_KEYS:
                if r == me:
                    full[k][a:b].copy_(like[k])
                else:
                    dist.recv(full[k][a:b], src=ranks[r], group=group)
        return full
    if like is not None:
        for k in _STATE_KEYS:
            dist.send(like[k].detach().float().contiguous(), dst=ranks[first], group=group)
    return None


def _param_state(part, model_sharded_state_dict, is_loading: bool) -> dict:
    """What megatron's `sharded_param_state_fully_reshardable` returns (same keys, shapes, dtypes,
    one main replica per shard), built from views of this rank's optimizer state."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensorFactory
    from megatron.core.dist_checkpointing.utils import extract_sharded_tensors_and_factories

    sharded, _ = extract_sharded_tensors_and_factories(model_sharded_state_dict)
    meta_of = {sh.data: sh for sh in nested_values(sharded)}
    dp = part.data_parallel_group.size()
    me = part.data_parallel_group.rank()
    out, idx = {}, -1
    for gbuf_idx, gbuf_range_maps in enumerate(part.gbuf_ranges):
        buffer = part.buffers[gbuf_idx]
        (range_maps,) = gbuf_range_maps.values()
        local = ChainMap(*(m["param_map"] for m in range_maps))
        for model_param, (start, end, bucket_id) in buffer.param_index_map.items():
            idx += 1  # megatron's numbering: every parameter of every buffer, in this order
            meta = meta_of[model_param]
            assert meta.flattened_range is None, f"flattened model tensor not supported ({meta})"
            owners = _owners(buffer, bucket_id, start, end, dp)
            mine = _local_states(part, model_param) if model_param in local else None
            whole = len(owners) == 1
            if is_loading:
                if mine is None:
                    continue  # megatron's load skips parameters without local state
                if whole:
                    data = {k: v.view(meta.data.shape) for k, v in mine.items()}
                else:  # read the whole parameter, keep our slice (megatron's load slices)
                    data = {k: torch.empty(meta.data.shape, dtype=torch.float32, device=v.device) for k, v in mine.items()}
            else:
                flat = mine if whole else _assemble(part, model_param, owners, end - start, mine)
                if flat is None:
                    continue  # another DP rank writes this parameter
                data = {k: v.view(meta.data.shape) if v.dtype == torch.float32 else v.float().view(meta.data.shape)
                        for k, v in flat.items()}
            # one main replica per shard, as the integrity checks of both save and load demand:
            # the model's replica id with its DP part (the last) replaced by "the first owner"
            rid = meta.replica_id if isinstance(meta.replica_id, tuple) else (meta.replica_id,)
            replica_id = (*rid[:-1], 0 if me == owners[0][0] else 1)
            tensors = {}
            for k, ten in data.items():
                kwargs = dict(key=f"optimizer.state.{k}.{meta.key}", data=ten, dtype=ten.dtype, replica_id=replica_id)
                if isinstance(meta, ShardedTensorFactory):
                    kwargs.pop("dtype")
                tensors[k] = dataclasses.replace(meta, **kwargs)
                tensors[k].validate_metadata_integrity()
            out[idx] = tensors
    return out


@contextlib.contextmanager
def fully_reshardable_without_copies(optimizer):
    """For megatron-core 0.16.1's DistributedOptimizer: within this context,
    `sharded_param_state_fully_reshardable` (which gathers the whole buffer's main parameters and
    moments into new world tensors on every rank, to save or to load) is replaced on each
    instance by `_param_state`: views of the optimizer's own state. Optimizers it does not know
    (precision-aware, FSDP, several instances) keep megatron's method."""
    from megatron.core.optimizer import distrib_optimizer as dopt

    import megatron.core

    parts = getattr(optimizer, "chained_optimizers", None) or [optimizer]
    targets = [p for p in parts if isinstance(p, dopt.DistributedOptimizer) and _supported(p)]
    if targets and megatron.core.__version__ != _WRITTEN_FOR:
        # the files must stay those megatron's own method writes: checked only for this version
        logger.warning("megatron-core %s (not %s): the optimizer state is gathered as megatron does "
                       "(checkpoint saves and loads use more memory)", megatron.core.__version__, _WRITTEN_FOR)
        targets = []
    for part in targets:
        def method(model_sharded_state_dict, is_loading=False, metadata=None, _part=part):
            return _param_state(_part, model_sharded_state_dict, is_loading)

        part.sharded_param_state_fully_reshardable = method  # instance attribute, removed below
    try:
        yield
    finally:
        for part in targets:
            del part.sharded_param_state_fully_reshardable
