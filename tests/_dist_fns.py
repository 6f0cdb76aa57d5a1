"""Rank functions for test_launch.py (spawned processes import them by module path)."""

import os

import torch
import torch.distributed as dist


def allreduce_rank_sum():
    dist.init_process_group("gloo")
    t = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(t)
    return {"rank": dist.get_rank(), "sum": t.item(), "env_world": int(os.environ["WORLD_SIZE"])}


def fail_on_rank_one():
    dist.init_process_group("gloo")
    if dist.get_rank() == 1:
        raise ValueError("rank one is broken on purpose")
    dist.barrier()  # rank 0 blocks here until the launcher stops it
    return "unreachable"


def init_single_rank_with_taken_port(port: int):
    """A lone rank told to use a port another process listens on: it must still start."""
    from r1mega.parallel.config import ParallelConfig
    from r1mega.parallel.distributed import destroy_distributed, init_distributed

    os.environ["MASTER_PORT"] = str(port)
    try:
        init_distributed(ParallelConfig(), seed=0)
        t = torch.tensor([3.0])
        dist.all_reduce(t)
        return {"world": dist.get_world_size(), "sum": t.item()}
    finally:
        destroy_distributed()
