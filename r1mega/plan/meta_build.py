"""Build one rank's model chunks on the meta device at any layout, in one process: torch's "fake"
process-group backend gives this process any rank of a world of any size (collectives do nothing),
megatron's parallel_state builds its groups on it, and the model is built under the meta device. So
a 671B layout's rank is built without its GPUs and checked against the planner's parameter counts
(tests/test_plan.py). No memory is allocated for the weights. Run it in a process of its own."""

from __future__ import annotations

import dataclasses

from r1mega.models.config import ModelConfig
from r1mega.parallel.config import ParallelConfig

__all__ = ["meta_rank_parameter_counts"]


def meta_rank_parameter_counts(model: ModelConfig, parallel: ParallelConfig, world_size: int, pp_rank: int) -> dict[str, int]:
    """{'dense', 'expert'} parameters of the rank at pipeline stage `pp_rank` with TP/EP/DP rank 0."""
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from r1mega.models.builder import build_model
    from r1mega.parallel.cpu import enable_cpu_support

    if not torch.cuda.is_available():
        enable_cpu_support()
    parallel.check_world_size(world_size)
    if model.tie_word_embeddings and parallel.pp > 1 and pp_rank == parallel.pp - 1:
        # the last stage's output layer is a same-shaped copy of the embedding; megatron's start-up
        # all-reduce that ties it has no meaning on a fake group
        model = dataclasses.replace(model, tie_word_embeddings=False)
    rank = pp_rank * (world_size // parallel.pp)  # megatron's default order puts pp outermost
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
    try:
        ps.initialize_model_parallel(**parallel.megatron_sizes(), create_gloo_process_groups=False)
        assert ps.get_pipeline_model_parallel_rank() == pp_rank and ps.get_tensor_model_parallel_rank() == 0
        with torch.device("meta"):
            chunks = build_model(model, parallel, params_dtype=torch.bfloat16,
                                 config_overrides={"perform_initialization": False})
        dense = expert = 0
        for chunk in chunks:
            for name, p in chunk.named_parameters():
                if ".experts." in name and ".shared_experts." not in name:
                    expert += p.numel()
                else:
                    dense += p.numel()
        return {"dense": dense, "expert": expert}
    finally:
        ps.destroy_model_parallel()
        dist.destroy_process_group()
