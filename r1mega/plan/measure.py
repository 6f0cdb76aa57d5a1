"""Measured peak of tensor memory on any device without an allocator API (CPU): every storage an op
creates is counted while it lives (a dispatch mode sees each op's outputs; a finalizer on the
storage's preserved Python object sees it die). An output that shares the storage of one of the op's
inputs (a view, an in-place or out= result) is not a new storage and is not counted: so a view of a
parameter or of a gradient buffer that existed before the block (`weight.t()`, `main_grad.add_`) adds
nothing. Used to check the planner against what a step really holds (tests/test_plan_accuracy.py)."""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["StorageTracker"]


class StorageTracker(TorchDispatchMode):
    """`with StorageTracker() as t: ...`; then t.peak_bytes (bytes live at once, counting only
    storages created inside the block) and t.live_bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._seen: set[int] = set()

    def _release(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live_bytes -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            id(t.untyped_storage())
            for t in tree_flatten((args, kwargs or {}))[0]
            if isinstance(t, torch.Tensor) and t.device.type != "meta"
        }
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key = id(storage)
            if key in self._seen or key in inputs:
                continue
            nbytes = storage.nbytes()
            self._seen.add(key)
            self.live_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            weakref.finalize(storage, self._release, key, nbytes)
        return out
