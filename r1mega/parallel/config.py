"""Parallel layout config (megatron-core's TP/PP/VPP/EP/ETP/CP/DP) and its validation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Optional

from r1mega.configlib import ConfigError

if TYPE_CHECKING:
    from r1mega.models.config import ModelConfig


@dataclass(kw_only=True)
class ParallelConfig:
    tp: int = 1
    """Tensor model parallel size: attention heads, MLP columns and the vocabulary are split over it."""
    pp: int = 1
    """Pipeline model parallel size: layers are split into this many stages."""
    vpp: Optional[int] = None
    """Virtual pipeline stages per PP rank (interleaved 1F1B); None = plain 1F1B."""
    ep: int = 1
    """Expert model parallel size (MoE models): experts are split over it."""
    etp: Optional[int] = None
    """Expert tensor parallel size; None = tp (megatron-core's default). etp < tp needs ep > 1."""
    cp: int = 1
    """Context parallel size: the sequence is split over it (needs transformer-engine attention)."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism over the TP group (norms/dropout on sequence shards)."""
    use_distributed_optimizer: bool = True
    """Shard optimizer state over the DP group (megatron's distributed optimizer, ZeRO-1)."""
    overlap_grad_reduce: bool = False
    """Overlap DP gradient reduction with backward (GPU; no benefit with gloo)."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """torch.distributed backend; auto = nccl when CUDA is available, else gloo."""
    timeout_minutes: int = 30
    """Collective timeout; long for first-iteration compiles and checkpoint loads."""

    def validate(self) -> None:
        for name in ("tp", "pp", "ep", "cp", "timeout_minutes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.vpp is not None:
            if self.vpp < 1:
                raise ConfigError(f"vpp: must be >= 1, got {self.vpp}")
            if self.pp == 1 and self.vpp > 1:
                raise ConfigError("vpp: virtual pipeline stages need pp > 1")
        if self.etp is not None and self.etp < 1:
            raise ConfigError(f"etp: must be >= 1, got {self.etp}")
        if self.ep == 1 and self.expert_tp != self.tp:
            # with ep == 1 megatron's DDP treats expert weights as dense parameters and reduces
            # them over the dense DP group only, while etp < tp gives each TP rank its own tokens
            # on a full expert copy: the expert gradients would miss the other TP ranks' tokens
            raise ConfigError(
                f"etp: {self.etp} differs from tp={self.tp} with ep=1; megatron-core reduces expert "
                "gradients correctly only with etp == tp when experts are not expert-parallel"
            )
        if self.sequence_parallel and self.tp == 1:
            raise ConfigError("sequence_parallel: needs tp > 1 (it splits the sequence over the TP group)")

    @property
    def expert_tp(self) -> int:
        return self.tp if self.etp is None else self.etp

    @property
    def model_parallel_size(self) -> int:
        return self.tp * self.pp * self.cp

    def megatron_sizes(self) -> dict[str, Any]:
        """The group sizes under the keyword names that both megatron's initialize_model_parallel
        and TransformerConfig take."""
        return dict(
            tensor_model_parallel_size=self.tp,
            pipeline_model_parallel_size=self.pp,
            virtual_pipeline_model_parallel_size=self.vpp if (self.vpp or 1) > 1 else None,
            context_parallel_size=self.cp,
            expert_model_parallel_size=self.ep,
            expert_tensor_parallel_size=self.expert_tp,
        )

    def data_parallel_size(self, world_size: int) -> int:
        self.check_world_size(world_size)
        return world_size // self.model_parallel_size

    def check_world_size(self, world_size: int) -> None:
        """World size must factor into TP*PP*CP*DP and into the expert layout ETP*EP*PP*EDP."""
        if world_size % self.model_parallel_size:
            raise ConfigError(
                f"parallel: world size {world_size} is not divisible by tp*pp*cp = "
                f"{self.tp}*{self.pp}*{self.cp} = {self.model_parallel_size}"
            )
        expert_mp = self.expert_tp * self.ep * self.pp
        if world_size % expert_mp:
            raise ConfigError(
                f"parallel.ep: world size {world_size} is not divisible by etp*ep*pp = "
                f"{self.expert_tp}*{self.ep}*{self.pp} = {expert_mp}"
            )
        if self.ep > 1 and (world_size // self.pp) % (self.ep * self.expert_tp):
            raise ConfigError(f"parallel.ep: {self.ep} does not divide the ranks of one pipeline stage")

    def check_model(self, model: "ModelConfig") -> None:
        """Layout constraints that depend on the model's shape."""
        if model.num_attention_heads % self.tp:
            raise ConfigError(
                f"parallel.tp: model.num_attention_heads={model.num_attention_heads} "
                f"is not divisible by tp={self.tp}"
            )
        groups = model.num_query_groups or model.num_attention_heads
        if not model.multi_latent_attention and groups % self.tp:
            raise ConfigError(
                f"parallel.tp: model.num_query_groups={groups} is not divisible by tp={self.tp}"
            )
        if self.ep > 1 and not model.num_experts:
            raise ConfigError(f"parallel.ep: ep={self.ep} needs an MoE model (model.num_experts is unset)")
        if model.num_experts and model.num_experts % self.ep:
            raise ConfigError(
                f"parallel.ep: model.num_experts={model.num_experts} is not divisible by ep={self.ep}"
            )
        has_moe_layers = bool(model.num_experts) and model.moe_first_k_dense < model.num_layers
        if has_moe_layers and self.tp > 1 and not self.sequence_parallel:
            raise ConfigError(
                "parallel.sequence_parallel: megatron-core requires sequence parallelism for MoE "
                f"layers with tp={self.tp} > 1 (set it true)"
            )
        stages = self.pp * (self.vpp or 1)
        if model.num_layers % stages:
            raise ConfigError(
                f"parallel.pp: model.num_layers={model.num_layers} is not divisible by "
                f"pp*vpp = {self.pp}*{self.vpp or 1} = {stages}"
            )
        if self.vpp and self.vpp > 1 and self.pp > 1 and model.num_layers // stages < 1:
            raise ConfigError("parallel.vpp: fewer layers than virtual stages")
