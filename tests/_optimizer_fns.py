"""Rank functions for test_optimizer.py: one megatron DDP + optimizer step under a DP layout."""

from __future__ import annotations



def optimizer_steps(model_yaml: str, cases: list[dict], *, n_microbatches: int = 4, mbs: int = 2, seq: int = 16, seed: int = 7) -> list[dict]:
    """For each case (use_distributed_optimizer + OptimizerConfig fields): fresh weights, one step
    on this rank's share of the same global batch; returns the parameters before and after."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from r1mega.models.builder import build_model
    from r1mega.parallel.config import ParallelConfig
    from r1mega.parallel.distributed import destroy_distributed, init_distributed
    from r1mega.training.megatron_step import forward_backward, wrap_with_ddp
    from r1mega.training.optimizer import OptimizerConfig, build_optimizer
    from tests import parallel_equivalence as pe

    model_cfg = pe._model_cfg(model_yaml)
    out = []
    for case in cases:
        case = dict(case)
        pcfg = ParallelConfig(use_distributed_optimizer=case.pop("use_distributed_optimizer"))
        init_distributed(pcfg, seed=seed)
        (model,) = build_model(model_cfg, pcfg)
        pe.randomize_(model, seed)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        ddp = wrap_with_ddp([model], pcfg)
        optimizer = build_optimizer(OptimizerConfig(**case), ddp, pcfg)
        batches = pe.make_microbatches(n_microbatches, mbs, seq, model_cfg.vocab_size, seed + 1)
        dp, rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
        share = n_microbatches // dp
        mine = batches[rank * share : (rank + 1) * share]
        forward_backward(ddp, mine, pe.mean_token_loss, seq_length=seq, micro_batch_size=mbs)
        ok, grad_norm, _ = optimizer.step()
        assert ok, "optimizer step skipped"
        after = {n: p.detach().clone() for n, p in model.named_parameters()}
        out.append({"before": before, "after": after, "grad_norm": float(grad_norm), "world": dist.get_world_size()})
        parallel_state.destroy_model_parallel()
    destroy_distributed()
    return out
