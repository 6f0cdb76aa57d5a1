"""Shared guard for launching r1mega's Triton kernels."""

from __future__ import annotations

import torch

from r1mega.kernels.dispatch import triton_interpreting

try:  # the interpreter wraps @triton.jit functions in its own type
    from triton.runtime.interpreter import InterpretedFunction as _Interpreted
except ImportError:  # pragma: no cover - older/newer triton layouts
    _Interpreted = ()


def check_launchable(t: torch.Tensor, kernel: object) -> None:
    """CPU tensors can only go through the interpreter: say so instead of failing inside a launch."""
    if t.is_cuda:
        return
    if not triton_interpreting() or not isinstance(kernel, _Interpreted):
        raise ValueError(
            "r1mega.kernels: Triton kernels on CPU tensors need TRITON_INTERPRET=1 set before "
            "r1mega.kernels' Triton modules are first imported (inputs are on the CPU)"
        )
