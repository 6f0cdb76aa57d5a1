"""Which implementation an op runs: Triton kernels on CUDA, the torch reference elsewhere.

Every op in `r1mega.kernels` takes `backend=None` and resolves it here:

- ``"auto"`` (the default): Triton when the inputs live on a CUDA device and triton imports, the
  torch reference otherwise (CPU training, CI).
- ``"triton"``: always the Triton kernels. On CPU tensors this only works under the Triton
  interpreter (``TRITON_INTERPRET=1`` set before the kernels are first used), which is how the
  tests run the real kernel code without a GPU.
- ``"torch"``: always the torch reference (to bisect a numerics question on GPU, say).

The process-wide choice comes from ``R1MEGA_KERNEL_BACKEND`` (read once, at first use) and can be
changed with `set_backend` or, scoped, with `use_backend`; a per-call ``backend=`` wins over both.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from typing import Iterator, Literal, Optional

import torch

__all__ = [
    "Backend",
    "BACKENDS",
    "get_backend",
    "set_backend",
    "use_backend",
    "resolve_backend",
    "triton_available",
    "triton_interpreting",
]

Backend = Literal["auto", "triton", "torch"]
BACKENDS: tuple[str, ...] = ("auto", "triton", "torch")
_ENV = "R1MEGA_KERNEL_BACKEND"

_state: dict[str, Optional[str]] = {"backend": None}


def _check(name: str, where: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{where}: unknown kernel backend {name!r}; expected one of {BACKENDS}")
    return name


def get_backend() -> str:
    """The process-wide backend ("auto" unless set by env or `set_backend`)."""
    if _state["backend"] is None:
        _state["backend"] = _check(os.environ.get(_ENV, "auto"), f"environment variable {_ENV}")
    return _state["backend"]


def set_backend(name: str) -> None:
    """Set the process-wide backend: "auto", "triton" or "torch"."""
    _state["backend"] = _check(name, "set_backend")


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Scoped `set_backend`: restores the previous choice on exit."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        _state["backend"] = previous


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpreting() -> bool:
    """True when Triton kernels run in the interpreter (``TRITON_INTERPRET=1``), e.g. on CPU."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def resolve_backend(backend: Optional[str], tensor: torch.Tensor, op: str) -> str:
    """Pick "triton" or "torch" for `op` on `tensor`'s device; ValueError if "triton" cannot run."""
    name = _check(backend, f"{op}(backend=...)") if backend is not None else get_backend()
    if name == "torch":
        return "torch"
    can_triton = triton_available() and (tensor.is_cuda or triton_interpreting())
    if name == "auto":
        return "triton" if (tensor.is_cuda and triton_available()) else "torch"
    if not can_triton:
        why = (
            "triton is not installed"
            if not triton_available()
            else f"inputs are on {tensor.device} and TRITON_INTERPRET=1 is not set"
        )
        raise ValueError(f"{op}: backend 'triton' was forced but cannot run here: {why}")
    return "triton"
