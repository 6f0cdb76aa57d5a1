"""The `plan` config section: the hardware and rollout-engine settings the memory planner needs
beyond the model and layout, and whether jobs refuse a layout it predicts will not fit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from r1mega.configlib import ConfigError

__all__ = ["PlanConfig"]


@dataclass(kw_only=True)
class PlanConfig:
    gpu: Optional[str] = None
    """GPU kind (h100-80gb, h200-141gb, a100-80gb, a100-40gb, b200-180gb); None = detect at start-up
    (the check is skipped without CUDA: on CPU there is no device memory to plan)."""
    gpus_per_node: int = 8
    """GPUs per node (host memory per node is summed over them)."""
    rollout_tp: int = 8
    """SGLang tensor-parallel size of one rollout engine (EP inside it for MoE models)."""
    mem_fraction_static: float = 0.8
    """SGLang's mem_fraction_static: share of GPU memory for engine weights + KV cache."""
    rollout_weight_bytes: int = 2
    """Bytes per weight in the engine: 2 (bf16), 1 (fp8, DeepSeek-V3's native format)."""
    concurrent_sequences: int = 16
    """Full-length sequences each engine must hold at once (one prompt's group at least)."""
    link_gbps: float = 400.0
    """Link bandwidth for the weight-sync estimate (Gbit/s; 400 = one NDR InfiniBand port)."""
    enforce: bool = True
    """r1mega train/sft refuse to start when the plan does not fit; false only warns."""

    def validate(self) -> None:
        for name in ("gpus_per_node", "rollout_tp", "concurrent_sequences", "rollout_weight_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not 0 < self.mem_fraction_static < 1:
            raise ConfigError(f"mem_fraction_static: must be in (0, 1), got {self.mem_fraction_static}")
        if self.link_gbps <= 0:
            raise ConfigError(f"link_gbps: must be > 0, got {self.link_gbps}")
        if self.gpu is not None:
            from r1mega.plan.memory import GPUS

            if self.gpu not in GPUS:
                raise ConfigError(f"gpu: unknown GPU {self.gpu!r} (known: {', '.join(GPUS)})")
