"""The host memory a checkpoint save or load may add to a rank, as arithmetic (no torch import), for
the memory planner: `save_transient_bytes(state_bytes)`.

Measured against it: tests/test_checkpoint_memory.py, and the table in docs/checkpoints.md (a save
adds 1-5% of the rank's training state, a load 8-18%: about twice the largest tensor read).
"""

from __future__ import annotations

__all__ = ["SAVE_OVERHEAD_FRACTION", "SAVE_OVERHEAD_BYTES", "save_transient_bytes"]

SAVE_OVERHEAD_FRACTION = 0.25
"""Peak extra host memory of a save or load, as a fraction of the rank's training state
(parameters, gradient buffers, optimizer state, shared storages counted once)."""
SAVE_OVERHEAD_BYTES = 128 << 20
"""Plus a constant: the forked writer processes' own pages and the pickled metadata."""


def save_transient_bytes(state_bytes: int) -> int:
    """The most host memory a checkpoint save or load may add to a rank holding `state_bytes` of
    training state."""
    return int(SAVE_OVERHEAD_FRACTION * state_bytes) + SAVE_OVERHEAD_BYTES
