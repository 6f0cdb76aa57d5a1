"""Rank function of the orchestration test (spawned processes import it by module path)."""

from __future__ import annotations


def make_engine(seed: int = 3, max_batch_size: int = 1):
    """The same tiny built-in engine on every rank (weights from a fixed seed). One sequence per
    forward: the built-in engine's float rounding depends on which prompts share a padded batch, so
    only then are samples bit-identical whichever engine draws them."""
    import torch

    from r1mega.rollout.builtin import BuiltinEngine
    from tests.rollout_helpers import tiny_config

    torch.manual_seed(seed)
    return BuiltinEngine(tiny_config("qwen2"), dtype="float32", device="cpu", eos_token_ids=[7], max_batch_size=max_batch_size)


def generate_on_ranks(tp: int, prompts: list, sampling_kwargs: dict) -> dict:
    """Every rank: join the job, build the engine where it owns one, generate the step collectively."""
    import torch.distributed as dist

    from r1mega.rollout.orchestration import RolloutGroups, generate_across_engines
    from r1mega.rollout.types import SamplingParams

    dist.init_process_group("gloo")
    groups = RolloutGroups.current(tp)
    engine = make_engine() if groups.is_owner else None
    samples = generate_across_engines(engine, groups, prompts, SamplingParams(**sampling_kwargs))
    return {"rank": dist.get_rank(), "engines": groups.num_engines, "owner": groups.is_owner,
            "samples": [(s.response_token_ids, s.response_logprobs, s.finish_reason) for s in samples]}
