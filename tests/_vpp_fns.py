"""Rank function for tests/test_vpp_trainers.py: SFT and RL jobs run one after another in one
launch, recording each training step's microbatch shapes (so the test can check they vary)."""

from __future__ import annotations

import os

import torch


def run_cases(out_dir: str, cases: list[dict]) -> list[dict]:
    """Each case: kind ("sft" or "rl"), name, overrides (config), layout (ParallelConfig fields);
    rl cases also `start` (a weights checkpoint). Returns per case: losses (last stage, else None),
    grad norms (every rank) and the [b, s] of each training step's microbatches."""
    from r1mega.training import rl_loss
    from tests import _rl_fns, _sft_fns

    results = []
    for case in cases:
        where = os.path.join(out_dir, case["name"])
        if case["kind"] == "sft":
            (run,) = _sft_fns.train_layouts(where, [case["layout"]], case["overrides"])
            results.append({"losses": run["losses"], "grad_norms": run["grad_norms"], "shapes": run["shapes"]})
            continue
        shapes: list[list[list[int]]] = []
        original = rl_loss.forward_backward

        def recording(model, microbatches, loss_fn, **kwargs):
            if not kwargs.get("forward_only", False):
                shapes.append([list(mb["tokens"].shape) for mb in microbatches])
            return original(model, microbatches, loss_fn, **kwargs)

        rl_loss.forward_backward = recording
        try:
            layout = [f"parallel.{k}={v}" for k, v in case["layout"].items()]
            res = _rl_fns.run_job(where, [f"checkpoint.init_from={case['start']}", "rl.eval_every=-1",
                                          "checkpoint.save_every=0", "checkpoint.save_at_end=false",
                                          *case["overrides"], *layout])
        finally:
            rl_loss.forward_backward = original
        rows = [r for r in res["rows"] if r["step"] > 0]  # rank 0 writes them (metrics shared from the last stage)
        results.append({"losses": [r["loss"] for r in rows], "grad_norms": [r["grad_norm"] for r in rows],
                        "shapes": shapes})
    return results


def shape_exchange(fixed: bool) -> dict:
    """At pp=2 each rank sends an activation shape to next and a gradient shape to prev (the same
    peer) in one call, as the interleaved schedule does; returns the shapes received from prev and
    from next. `fixed=False` runs megatron's own `_communicate_shapes` (the negative control)."""
    from megatron.core import ModelParallelConfig, parallel_state
    from megatron.core.pipeline_parallel.p2p_communication import P2PCommunicator

    from r1mega.parallel.config import ParallelConfig
    from r1mega.parallel.distributed import destroy_distributed, init_distributed

    init_distributed(ParallelConfig(pp=2), seed=1)
    try:
        rank = parallel_state.get_pipeline_model_parallel_rank()
        config = ModelParallelConfig(pipeline_model_parallel_size=2, variable_seq_lengths=True,
                                     batch_p2p_comm=False, pipeline_dtype=torch.float32)
        comm = P2PCommunicator(parallel_state.get_pipeline_model_parallel_group(), config)
        exchange = comm._communicate_shapes if fixed else comm._communicate_shapes.__wrapped__.__get__(comm)
        activation = torch.empty(10 + rank, 1, 4)  # to next: [s, b, h]
        gradient = torch.empty(20 + rank, 1, 4)  # to prev
        from_prev, from_next = exchange(activation, gradient, True, True)
        return {"rank": rank, "from_prev": from_prev, "from_next": from_next}
    finally:
        destroy_distributed()
