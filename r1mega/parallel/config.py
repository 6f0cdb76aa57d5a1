"""Parallel layout config (megatron-core's TP/PP/VPP/EP/ETP/CP/DP) and its validation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Optional

from r1mega.configlib import ConfigError
from r1mega.parallel.pipeline_split import PipelineSplit, stage_layer_counts

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
    num_layers_in_first_pipeline_stage: Optional[int] = None
    """Uneven pipeline: transformer layers on the first PP rank (over all its virtual stages); the
    embedding already weighs on that rank. None = the even share. The other ranks split the rest."""
    num_layers_in_last_pipeline_stage: Optional[int] = None
    """Uneven pipeline: transformer layers on the last PP rank (it also holds the output layer and
    loss). With pp=2 and vpp > 1 only one of first/last may be set (megatron-core 0.16.1 crashes)."""
    pipeline_layout: Optional[str] = None
    """megatron-core's pipeline layout string, e.g. "Et*3|t*2L": one |-separated stage per (virtual
    stage, rank) in the order vpp_rank*pp + pp_rank; E embedding, t layer, L loss, (..)*n repeats.
    Its stage count must be pp * vpp (set vpp to match). Excludes the first/last counts."""
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
    grad_reduce_in_fp32: bool = True
    """Keep main gradients (megatron DDP's grad buffer) in fp32 and reduce them in fp32; false keeps
    them in the parameter dtype (bf16: half the gradient memory, less exact reductions)."""
    overlap_param_gather: bool = False
    """Distributed optimizer: overlap the all-gather of updated parameters with the next forward
    (megatron DDP's overlap_param_gather; needs overlap_grad_reduce)."""
    gradient_accumulation_fusion: bool = False
    """Accumulate weight gradients straight into main_grad in the GEMM (needs CUDA and
    transformer-engine or apex's fused_weight_gradient_mlp_cuda); refused on CPU."""
    recompute_granularity: Optional[Literal["full", "selective"]] = None
    """Activation recompute: "full" re-runs whole layers in backward (only their inputs are kept),
    "selective" re-runs the submodules in recompute_modules; None keeps every activation."""
    recompute_method: Optional[Literal["uniform", "block"]] = None
    """Full recompute only: "uniform" checkpoints groups of recompute_num_layers layers, "block"
    recomputes the first recompute_num_layers layers of each pipeline stage (chunk) and keeps the rest."""
    recompute_num_layers: Optional[int] = None
    """Full recompute only: layers per checkpointed group (uniform) or recomputed per stage (block)."""
    recompute_modules: Optional[list[str]] = None
    """Selective recompute only: any of core_attn, mlp, moe, shared_experts, layernorm, mla_up_proj
    (moe_act needs transformer-engine's grouped GEMM). None = megatron's default ["core_attn"]."""
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
        if self.overlap_param_gather and not (self.use_distributed_optimizer and self.overlap_grad_reduce):
            raise ConfigError(
                "overlap_param_gather: needs use_distributed_optimizer=true and overlap_grad_reduce=true"
            )
        self._validate_recompute()

    _RECOMPUTE_MODULES = ("core_attn", "mlp", "moe", "shared_experts", "layernorm", "mla_up_proj", "moe_act")

    def _validate_recompute(self) -> None:
        gran = self.recompute_granularity
        if gran == "full":
            if self.recompute_method is None or self.recompute_num_layers is None:
                raise ConfigError(
                    "recompute_method: full recompute needs recompute_method (uniform or block) and "
                    "recompute_num_layers (e.g. uniform with 1: every layer recomputed)"
                )
            if self.recompute_num_layers < 1:
                raise ConfigError(f"recompute_num_layers: must be >= 1, got {self.recompute_num_layers}")
            if self.recompute_modules is not None:
                raise ConfigError("recompute_modules: only for recompute_granularity=selective")
        elif gran == "selective":
            if self.recompute_method is not None or self.recompute_num_layers is not None:
                raise ConfigError(
                    "recompute_method: selective recompute takes recompute_modules only "
                    "(unset recompute_method and recompute_num_layers)"
                )
            for m in self.recompute_modules or []:
                if m not in self._RECOMPUTE_MODULES:
                    raise ConfigError(
                        f"recompute_modules: unknown module {m!r} (choose from {', '.join(self._RECOMPUTE_MODULES)})"
                    )
        elif self.recompute_method is not None or self.recompute_num_layers is not None or self.recompute_modules:
            raise ConfigError("recompute_granularity: set it (full or selective) to use the other recompute_* keys")

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

    @property
    def pipeline_split(self) -> PipelineSplit:
        return PipelineSplit(
            pp=self.pp, vpp=self.vpp if (self.vpp or 1) > 1 else None,
            first=self.num_layers_in_first_pipeline_stage, last=self.num_layers_in_last_pipeline_stage,
            layout=self.pipeline_layout,
        )

    def stage_layer_counts(self, num_layers: int) -> list[list[int]]:
        """counts[pp_rank][vp_stage]: transformer layers of each model chunk (ConfigError if invalid)."""
        return stage_layer_counts(num_layers, self.pipeline_split)

    def transformer_config_kwargs(self) -> dict[str, Any]:
        """Split, recompute and fusion settings that go to TransformerConfig (not to parallel_state)."""
        out: dict[str, Any] = dict(
            num_layers_in_first_pipeline_stage=self.num_layers_in_first_pipeline_stage,
            num_layers_in_last_pipeline_stage=self.num_layers_in_last_pipeline_stage,
            pipeline_model_parallel_layout=self.pipeline_layout,
            gradient_accumulation_fusion=self.gradient_accumulation_fusion,
        )
        if self.recompute_granularity is not None:
            out.update(
                recompute_granularity=self.recompute_granularity,
                recompute_method=self.recompute_method,
                recompute_num_layers=self.recompute_num_layers,
            )
            if self.recompute_modules is not None:
                out["recompute_modules"] = list(self.recompute_modules)
        return out

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
        counts = self.stage_layer_counts(model.num_layers)
        if any(c < 1 for rank in counts for c in rank) and self.pipeline_layout is None:
            raise ConfigError(
                f"parallel.vpp: model.num_layers={model.num_layers} leaves a virtual stage without layers"
            )
        mods = self.recompute_modules or []
        if "mla_up_proj" in mods and not model.multi_latent_attention:
            raise ConfigError("parallel.recompute_modules: mla_up_proj needs an MLA model (deepseek_v3)")
        if ("moe" in mods or "moe_act" in mods or "shared_experts" in mods) and not model.is_moe:
            raise ConfigError("parallel.recompute_modules: moe/moe_act/shared_experts need an MoE model")
