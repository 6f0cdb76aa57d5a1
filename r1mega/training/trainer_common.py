"""Set-up shared by the supervised and RL trainers (both run megatron's schedule the same way)."""

from __future__ import annotations

from typing import Any

import torch

from r1mega.config import Config

__all__ = ["trainer_config_overrides", "find_metrics_source"]


def trainer_config_overrides(cfg: Config) -> dict[str, Any]:
    """TransformerConfig settings a trainer needs on top of the model's own."""
    from r1mega.configlib import ConfigError

    # token-mean (or per-response mean) over the whole global batch: see the trainers' docstrings
    overrides: dict[str, Any] = {"calculate_per_token_loss": True}
    if cfg.parallel.pp > 1:
        # microbatches differ in length (and in size, under a token budget): stages exchange
        # each activation's shape first. megatron allows that with the alltoall dispatcher only.
        overrides["variable_seq_lengths"] = True
        if not cfg.model.is_moe:
            overrides["moe_token_dispatcher_type"] = "alltoall"  # dense model: no dispatcher runs
        elif cfg.model.moe_token_dispatcher_type != "alltoall":
            raise ConfigError(
                "model.moe_token_dispatcher_type: pipeline parallelism with variable-length "
                "microbatches needs the alltoall dispatcher (megatron-core refuses allgather)"
            )
    return overrides


def find_metrics_source(is_last_stage: bool, dp_rank: int) -> int:
    """Global rank of the last pipeline stage's TP/CP/DP rank 0: it holds the reduced metrics."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    mine = (
        is_last_stage
        and parallel_state.get_tensor_model_parallel_rank() == 0
        and parallel_state.get_context_parallel_rank() == 0
        and dp_rank == 0
    )
    return rank_where(mine)


def rank_where(mine: bool) -> int:
    """A collective: the highest global rank for which `mine` is true (-1 when none)."""
    import torch.distributed as dist

    flag = torch.tensor([dist.get_rank() if mine else -1], dtype=torch.long)
    if dist.get_world_size() > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def sum_over_data_parallel(values, dp_size: int) -> list[float]:
    """Sum `values` over the data-parallel group (float64, so token and unit counts stay exact)."""
    from megatron.core import parallel_state

    t = torch.tensor(list(values), dtype=torch.float64)
    if dp_size > 1:
        torch.distributed.all_reduce(t, group=parallel_state.get_data_parallel_group(with_context_parallel=True))
    return t.tolist()
