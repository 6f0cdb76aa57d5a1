"""Kernel tests run the Triton code itself: on a GPU compiled, on CPU through the interpreter.

TRITON_INTERPRET must be set before r1mega.kernels' Triton modules are imported (triton decides
at `@triton.jit` time); r1mega.kernels imports them lazily, at the first Triton call, so setting
it here, at collection, is early enough. It is set only where there is no GPU: on a GPU machine
the same tests run the compiled kernels.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Spawned gloo ranks need the same setting (run_distributed's env=).
TRITON_ENV = {"TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "0")}


@pytest.fixture
def device() -> torch.device:
    """Where the Triton path runs: CUDA when present, else CPU under the interpreter."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
