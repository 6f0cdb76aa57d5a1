"""The optimizer config section and megatron's optimizer (Adam/SGD, distributed, grad clipping).

`build_optimizer(cfg, model_chunks, parallel_cfg)` takes the DDP-wrapped chunks
(r1mega/training/megatron_step.py:wrap_with_ddp) and returns megatron's MegatronOptimizer: its
`step()` clips gradients by global norm (over every parallel group), steps, and, with the
distributed optimizer, gathers the updated parameter shards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from r1mega.configlib import ConfigError
from r1mega.parallel.config import ParallelConfig

__all__ = ["OptimizerConfig", "build_optimizer"]


@dataclass(kw_only=True)
class OptimizerConfig:
    name: Literal["adam", "sgd"] = "adam"
    """Adam (decoupled weight decay, i.e. AdamW) or SGD with momentum."""
    lr: float = 1e-6
    """Peak learning rate (R1-Zero used 3e-6; the tiny default trains faster)."""
    min_lr: float = 0.0
    """Floor of the learning-rate schedule."""
    lr_warmup_steps: int = 0
    """Linear warmup from lr_warmup_init to lr over this many optimizer steps."""
    lr_warmup_init: float = 0.0
    """Learning rate at step 0 of the warmup."""
    lr_decay_style: Literal["constant", "linear", "cosine"] = "constant"
    """After warmup: stay at lr, or decay linearly / along a half cosine to min_lr (R1's SFT: cosine
    5e-5 -> 5e-6). The schedule is megatron's OptimizerParamScheduler (r1mega/training/schedule.py)."""
    lr_decay_steps: Optional[int] = None
    """Step at which the decay reaches min_lr (counted from step 0, warmup included); None = the
    trainer's total number of steps."""
    weight_decay: float = 0.01
    """Decoupled weight decay; megatron exempts biases and norm weights."""
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    """0.95 rather than 0.999: the usual choice for LLM training stability."""
    adam_eps: float = 1e-8
    sgd_momentum: float = 0.9
    clip_grad: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    cpu_offload: bool = False
    """Keep (a fraction of) the fp32 main parameters and Adam states in host memory and step them
    there (megatron's HybridDeviceOptimizer, optimizer_cpu_offload). Needs CUDA, adam and the
    distributed optimizer; the planner counts the offloaded bytes as host memory."""
    offload_fraction: float = 1.0
    """Share of the optimizer state offloaded when cpu_offload is on (megatron's
    optimizer_offload_fraction)."""
    overlap_cpu_optimizer_d2h_h2d: bool = False
    """Overlap the offloaded optimizer's host<->device copies with its CPU step."""

    def validate(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"lr: must be > 0, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"min_lr: must be in [0, lr={self.lr}], got {self.min_lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay: must be >= 0, got {self.weight_decay}")
        for name in ("adam_beta1", "adam_beta2", "sgd_momentum"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be in [0, 1), got {getattr(self, name)}")
        if self.adam_eps <= 0:
            raise ConfigError(f"adam_eps: must be > 0, got {self.adam_eps}")
        if self.clip_grad < 0:
            raise ConfigError(f"clip_grad: must be >= 0 (0 = off), got {self.clip_grad}")
        if self.lr_warmup_steps < 0:
            raise ConfigError(f"lr_warmup_steps: must be >= 0, got {self.lr_warmup_steps}")
        if not 0 <= self.lr_warmup_init <= self.lr:
            raise ConfigError(f"lr_warmup_init: must be in [0, lr={self.lr}], got {self.lr_warmup_init}")
        if not 0 < self.offload_fraction <= 1:
            raise ConfigError(f"offload_fraction: must be in (0, 1], got {self.offload_fraction}")
        if self.cpu_offload and self.name != "adam":
            raise ConfigError("cpu_offload: megatron offloads the adam optimizer only (set name=adam)")
        if self.overlap_cpu_optimizer_d2h_h2d and not self.cpu_offload:
            raise ConfigError("overlap_cpu_optimizer_d2h_h2d: only with cpu_offload=true")
        if self.lr_decay_steps is not None and self.lr_decay_steps <= self.lr_warmup_steps:
            raise ConfigError(
                f"lr_decay_steps: must be > lr_warmup_steps={self.lr_warmup_steps}, got {self.lr_decay_steps}"
            )


def build_optimizer(cfg: OptimizerConfig, model_chunks: list, parallel_cfg: ParallelConfig):
    """megatron's optimizer over DDP-wrapped chunks; distributed (ZeRO-1) per `parallel_cfg`."""
    import torch  # here, not at module level: config loading must stay torch-free (fast CLI start)
    from megatron.core.optimizer import OptimizerConfig as MegatronOptimizerConfig
    from megatron.core.optimizer import get_megatron_optimizer

    if parallel_cfg.use_distributed_optimizer and cfg.name != "adam":
        raise ValueError("megatron's distributed optimizer supports adam only")
    if cfg.cpu_offload and not torch.cuda.is_available():
        # host memory is the only memory on CPU: offloading would move nothing, and megatron's
        # HybridDeviceOptimizer assumes CUDA streams for its copies
        raise ValueError("optimizer.cpu_offload: needs CUDA (there is no device memory to relieve on CPU)")
    tcfg = model_chunks[0].config
    mcfg = MegatronOptimizerConfig(
        optimizer=cfg.name,
        lr=cfg.lr,
        min_lr=cfg.min_lr,
        weight_decay=cfg.weight_decay,
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        adam_eps=cfg.adam_eps,
        sgd_momentum=cfg.sgd_momentum,
        clip_grad=cfg.clip_grad,
        use_distributed_optimizer=parallel_cfg.use_distributed_optimizer,
        bf16=tcfg.params_dtype == torch.bfloat16,
        fp16=tcfg.params_dtype == torch.float16,
        params_dtype=tcfg.params_dtype,
        optimizer_cpu_offload=cfg.cpu_offload,
        optimizer_offload_fraction=cfg.offload_fraction if cfg.cpu_offload else 0.0,
        overlap_cpu_optimizer_d2h_h2d=cfg.overlap_cpu_optimizer_d2h_h2d,
        # megatron-LM pairs offload with its precision-aware path (HybridDeviceOptimizer keeps
        # the fp32 main params itself)
        use_precision_aware_optimizer=cfg.cpu_offload,
    )
    optimizer = get_megatron_optimizer(mcfg, model_chunks)
    _foreach_on_host(optimizer)
    return optimizer


def _foreach_on_host(optimizer) -> None:
    """torch's Adam/SGD pick their multi-tensor (foreach) implementation only for CUDA tensors and
    step host parameters one tensor at a time: a dozen Python-dispatched ops per parameter. Where
    every parameter of a torch optimizer is on the CPU, turn foreach on: the same arithmetic (the
    results are bit-identical, tests/test_optimizer.py) in a handful of calls per step."""
    import torch

    inner = [getattr(o, "optimizer", None) for o in getattr(optimizer, "chained_optimizers", [optimizer])]
    for opt in inner:
        if not isinstance(opt, (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)):
            continue
        params = [p for group in opt.param_groups for p in group["params"]]
        if not params or any(p.device.type != "cpu" for p in params):
            continue
        for group in opt.param_groups:
            if not group.get("fused") and not group.get("differentiable"):
                group["foreach"] = True
