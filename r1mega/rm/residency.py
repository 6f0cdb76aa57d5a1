"""Frozen weights that live in host memory and visit the accelerator only while they are used.

A reward model colocated with the policy needs its weights on the GPU only while it scores, after
rollout; the rest of the step (the policy's forward/backward and optimizer) can use that memory.
Since the weights never change (RMs are frozen), one host copy made at load serves every visit:
putting the model on the device is one host-to-device copy per tensor, taking it off is dropping
the device copy (no device-to-host copy). Host copies are pinned when CUDA is present, so the
copies are asynchronous on the current stream, ordered before the forward that reads them.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch

__all__ = ["HostResidency"]


class HostResidency:
    def __init__(self, modules: Iterable[torch.nn.Module], device: torch.device | str):
        self.device = torch.device(device)
        seen: set[int] = set()
        self.tensors: list[torch.Tensor] = []
        for m in modules:
            for t in list(m.parameters()) + list(m.buffers()):
                if id(t) not in seen:  # tied weights (embedding = output layer) once
                    seen.add(id(t))
                    self.tensors.append(t)
        pin = torch.cuda.is_available()
        self.host = [t.detach().to("cpu", copy=True) for t in self.tensors]
        if pin:
            self.host = [h.pin_memory() for h in self.host]
        self.loaded = True
        self.offload()

    @property
    def nbytes(self) -> int:
        """Bytes the weights take on the device while loaded."""
        return sum(h.numel() * h.element_size() for h in self.host)

    def onload(self) -> None:
        for t, h in zip(self.tensors, self.host):
            t.data = h.to(self.device, non_blocking=True, copy=True)
        self.loaded = True

    def offload(self) -> None:
        for t, h in zip(self.tensors, self.host):
            t.data = h  # the device copy is freed when nothing else holds it
        self.loaded = False

    @contextmanager
    def on_device(self) -> Iterator[None]:
        self.onload()
        try:
            yield
        finally:
            self.offload()
