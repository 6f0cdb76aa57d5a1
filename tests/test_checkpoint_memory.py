"""A checkpoint save or load adds at most the documented bound of host memory to a rank
(checkpoint_memory.save_transient_bytes), measured on a model whose training state dominates the
process; the same meter sees megatron's own save path, and a plain copy of the state, go past it."""

import pytest

from r1mega.parallel.launch import run_distributed
from r1mega.training.checkpoint_memory import save_transient_bytes
from tests import _checkpoint_memory_fns

GIB = 2**30


@pytest.mark.dist
def test_save_and_load_stay_within_the_documented_memory_bound(tmp_path):
    results = run_distributed(_checkpoint_memory_fns.save_and_load, 2, str(tmp_path), {"tp": 2}, timeout=600)
    for rank, r in enumerate(results):
        state, bound = r["state_bytes"], save_transient_bytes(r["state_bytes"])
        assert state > 0.3 * GIB, f"rank {rank}: the state ({state / GIB:.2f} GiB) should dominate the process"
        assert r["restored"], f"rank {rank}: weights or Adam moments differ after save + load"
        for kind in ("save", "load"):
            peak = r[kind]["peak_extra_bytes"]
            assert peak is not None and peak <= bound, (
                f"rank {rank}: {kind} added {peak / GIB:.3f} GiB, bound {bound / GIB:.3f} GiB (state {state / GIB:.3f})"
            )
        # the meter sees copies: megatron's own path, and a plain copy of the tensors
        unbounded = r["unbounded_save"]["peak_extra_bytes"]
        assert unbounded > bound and unbounded > state, (rank, unbounded / GIB, bound / GIB, state / GIB)
        assert r["copy"]["peak_extra_bytes"] >= 0.9 * r["copy"]["bytes"], (rank, r["copy"])
