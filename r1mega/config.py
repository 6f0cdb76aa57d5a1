"""The job config: narrow sections (model, parallel, run, ...) composed into one `Config`.

`load_config("examples/configs/tiny.yaml", ["optimizer.lr=1e-5", "parallel.tp=2"])` reads YAML, applies
dotted overrides and validates everything before any process group or model is built. Layout checks
that need the world size run in `Config.check_layout(world_size)` at distributed start-up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from r1mega.configlib import (
    ConfigError,
    apply_overrides,
    from_dict,
    load_yaml_tree,
    strip_internal,
    to_dict,
)
from r1mega.algorithms.config import AlgorithmConfig
from r1mega.data.config import DataConfig
from r1mega.eval.config import EvalConfig
from r1mega.models.config import ModelConfig
from r1mega.parallel.config import ParallelConfig
from r1mega.plan.config import PlanConfig
from r1mega.training.checkpoint_config import CheckpointConfig
from r1mega.training.logging import LoggingConfig
from r1mega.training.optimizer import OptimizerConfig
from r1mega.training.rl_config import RLConfig
from r1mega.training.sft_config import PretrainConfig, SFTConfig
from r1mega.rm.config import RMConfig

from r1mega.rewards.config import RewardConfig
from r1mega.rollout.config import RolloutConfig

__all__ = [
    "Config", "RunConfig", "OptimizerConfig", "DataConfig", "RewardConfig", "RolloutConfig", "LoggingConfig",
    "SFTConfig", "PretrainConfig", "CheckpointConfig", "RLConfig", "EvalConfig",
    "ConfigError", "load_config", "save_config",
]


@dataclass(kw_only=True)
class RunConfig:
    name: str = "r1mega"
    """Run name: the subdirectory of output_dir and the tensorboard/wandb run name."""
    output_dir: str = "runs"
    """Parent directory of run directories (logs, plots, checkpoints)."""
    seed: int = 1234
    """Seeds python, numpy, torch and megatron's model-parallel RNG tracker."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms; slower, for bisecting numerics."""

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


@dataclass(kw_only=True)
class Config:
    model: ModelConfig
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    run: RunConfig = field(default_factory=RunConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rewards: RewardConfig = field(default_factory=RewardConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    """`r1mega eval` (docs/eval.md); the other commands ignore it."""
    rm: RMConfig = field(default_factory=RMConfig)

    def validate(self) -> None:
        from r1mega.training.routing_replay import check_routing_replay

        self.parallel.check_model(self.model)
        check_routing_replay(self)
        if self.parallel.use_distributed_optimizer and self.optimizer.name != "adam":
            raise ConfigError(
                "optimizer.name: megatron's distributed optimizer supports adam only "
                f"(got {self.optimizer.name!r}; or set parallel.use_distributed_optimizer=false)"
            )

        if self.optimizer.cpu_offload and not self.parallel.use_distributed_optimizer:
            raise ConfigError(
                "optimizer.cpu_offload: megatron offloads the distributed optimizer's shards "
                "(set parallel.use_distributed_optimizer=true)"
            )

    def check_sequence_budget(self) -> None:
        """Prompt + generated tokens must fit the model's positions; called by stages that generate."""
        longest = self.data.max_prompt_tokens + self.rollout.max_new_tokens
        if longest > self.model.max_position_embeddings:
            raise ConfigError(
                f"data.max_prompt_tokens + rollout.max_new_tokens = {self.data.max_prompt_tokens} + "
                f"{self.rollout.max_new_tokens} = {longest} exceeds "
                f"model.max_position_embeddings={self.model.max_position_embeddings}"
            )

    def check_layout(self, world_size: int) -> None:
        """World-size dependent checks, called once torch.distributed knows the world size."""
        self.parallel.check_world_size(world_size)
        self.parallel.check_model(self.model)


def load_config(path: str | os.PathLike | None, overrides: Optional[list[str]] = None) -> Config:
    """YAML file (or nothing) + `a.b=value` overrides -> validated Config; ConfigError on mistakes."""
    raw = load_yaml_tree(path) if path is not None else {}
    base_dir = Path(path).resolve().parent if path is not None else Path.cwd()
    raw = apply_overrides(raw, list(overrides or []))
    return from_dict(Config, raw, base_dir=base_dir)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the fully resolved config (every default spelled out) for the run record."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(strip_internal(to_dict(cfg)), f, sort_keys=False)
