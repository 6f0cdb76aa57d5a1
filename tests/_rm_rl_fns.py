"""Rank functions of the RL-with-reward-models tests: random RM checkpoints saved as `r1mega rm`
saves them, scored through RewardModelScorer / ModelRewards."""

from __future__ import annotations

import dataclasses

import torch


def _cfg(out_dir: str, overrides=()):
    from r1mega.config import load_config

    return load_config("examples/configs/tiny_r1_zero.yaml", [
        f"run.output_dir={out_dir}", "rewards.num_workers=0", "logging.tensorboard=false", *overrides,
    ])


def save_random_rm(out_dir: str, name: str, seed: int, vocab_size: int = 0) -> str:
    """A reward model (head: score) of the tiny architecture with random weights, saved as a run's
    checkpoint; returns the checkpoint root."""
    from r1mega.models.builder import build_model
    from r1mega.parallel.config import ParallelConfig
    from r1mega.parallel.distributed import destroy_distributed, init_distributed
    from r1mega.training.checkpoint import save_checkpoint
    from tests import parallel_equivalence as pe

    cfg = _cfg(out_dir)
    model_cfg = dataclasses.replace(cfg.model, head="score", **({"vocab_size": vocab_size} if vocab_size else {}))
    init_distributed(ParallelConfig(), seed=seed)
    chunks = build_model(model_cfg, ParallelConfig())
    pe.randomize_(chunks[0], seed)
    root = f"{out_dir}/{name}/checkpoints"
    save_checkpoint(root, 1, chunks, model_config=model_cfg)
    destroy_distributed()
    return root


class FakeSample:
    def __init__(self, text: str):
        self.response_text = text
        self.prompt_token_ids = [3]
        self.response_token_ids = [4]
        self.response_logprobs = [0.0]
        self.finish_reason = "stop"


def score_texts(out_dir: str, specs: list[dict], layout: dict, batches: list[list[tuple[str, dict]]]) -> list:
    """ModelRewards (rule rewards inline + the RMs of `specs`) on each batch of (response, reference);
    per batch the list of score dicts (every rank returns them)."""
    from r1mega.configlib import from_dict
    from r1mega.data.tokenizer import load_tokenizer
    from r1mega.parallel.config import ParallelConfig
    from r1mega.parallel.distributed import destroy_distributed, init_distributed
    from r1mega.rewards.config import RewardModelSpec
    from r1mega.rewards.pool import RewardPool
    from r1mega.rm.scoring import ModelRewards, build_scorers
    from r1mega.training.rl_rollout import SharedRewards

    cfg = _cfg(out_dir, ["rewards.weights={accuracy: 1.0, format: 0.5}"])
    cfg = dataclasses.replace(
        cfg, parallel=ParallelConfig(**{"use_distributed_optimizer": False, **layout}),
        rewards=dataclasses.replace(cfg.rewards, models=[from_dict(RewardModelSpec, s) for s in specs]),
    )
    init_distributed(cfg.parallel, seed=1)
    tok = load_tokenizer(cfg.data.tokenizer)
    rewards = ModelRewards(SharedRewards(RewardPool(cfg.rewards)), build_scorers(cfg, tok))
    out = [rewards.score([FakeSample(t) for t, _ in batch], [r for _, r in batch]) for batch in batches]
    rewards.close()
    destroy_distributed()
    return out
