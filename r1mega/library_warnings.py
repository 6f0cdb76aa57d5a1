"""Silence the start-up notices of the libraries underneath (megatron-core, torch.distributed).

Every rank prints them at every start and they say nothing about the job: CPU runs have no apex
and no CUDA connections, and the deprecations are megatron's own calls into torch. Warnings of
r1mega itself and every other library warning stay visible.
"""

from __future__ import annotations

import warnings

__all__ = ["quiet_library_warnings"]

_QUIET_WARNINGS = (
    r"Apex is not installed",
    r"Transformer Engine and Apex are not installed",
    r".*CUDA_DEVICE_MAX_CONNECTIONS",
    r"full scope is deprecated",
    r"`torch\.distributed\.\w+` is deprecated",
    r"Please use DTensor instead",
    r"`load_state_dict` is deprecated",
    # megatron's distributed optimizer zero_grad reads .grad of its shard views (0.16.1,
    # optimizer._zero_grad_group_helper); gradients are checked against references in the tests
    r"The \.grad attribute of a Tensor that is not a leaf Tensor is being accessed",
)


def quiet_library_warnings() -> None:
    """Install the filters in this process (spawned ranks call it again: filters are per process)."""
    for pattern in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
