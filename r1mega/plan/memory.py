"""Per-GPU memory of a colocated RL (or SFT) job, term by term, from the configs alone.

Training side (the pipeline stage with the most parameters bounds an uneven split):
- weights in the parameter dtype; gradients in megatron DDP's buffer dtype (fp32 with
  grad_reduce_in_fp32); fp32 main params (bf16 training) + Adam m and v, sharded over the data-
  (dense) and expert-data-parallel (experts) groups by the distributed optimizer, or moved to the
  host by optimizer.cpu_offload;
- activations: per layer per token (`layer_activation_bytes`), times the microbatches in flight on
  the first pipeline rank under 1F1B (pp) or interleaved 1F1B (megatron's warm-up count), with the
  configured recompute; MoE dispatch buffers; the last stage's logits.
Rollout side (SGLang, colocated): the engine's static pool is `mem_fraction_static` of the GPU
(weights at rollout TP + KV cache); KV bytes per token of the longest sequence; CUDA graphs.
Not modelled exactly (named in the table with where the number comes from): CUDA context + NCCL
buffers, CUDA graph pools, allocator fragmentation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from r1mega.models.config import ModelConfig
from r1mega.parallel.config import ParallelConfig
from r1mega.plan.params import rank_params, stage_layers

__all__ = ["GPUS", "TrainShape", "RolloutShape", "Term", "Plan", "plan_memory", "layer_activation_bytes"]

GiB = 1024**3

GPUS: dict[str, float] = {
    # usable device memory in GiB as nvidia-smi reports it (80 GB / 141 GB parts)
    "h100-80gb": 79.6,
    "h200-141gb": 139.8,
    "a100-80gb": 79.2,
    "a100-40gb": 39.4,
    "b200-180gb": 178.4,
}

CUDA_CONTEXT_AND_NCCL_GIB = 3.0
"""CUDA context (~0.5 GiB) + NCCL communicator buffers (NCCL_BUFFSIZE 4 MiB x channels x peers,
~1-2 GiB for TP/EP/DP/PP groups at this scale) + allocator slack; not measurable on CPU: an estimate
from NVIDIA's NCCL environment documentation, to be replaced by a measured number."""

CUDA_GRAPHS_GIB = 2.0
"""SGLang's CUDA graph pool for decode batch sizes up to its default cuda_graph_max_bs; SGLang logs
it at start-up ("Capture cuda graph end ... mem usage=..."); an estimate until measured here."""


@dataclass(frozen=True)
class TrainShape:
    micro_batch_tokens: int
    """Tokens in one training microbatch (batch x sequence, or the token budget)."""
    num_microbatches: int
    """Microbatches per optimizer step per data-parallel rank."""
    params_bytes: int = 2
    """2 for bf16 training, 4 for fp32."""
    seq_length: Optional[int] = None
    """Padded sequence length of a microbatch (the local-spec model's s x s terms need it);
    None = one sequence of micro_batch_tokens."""


@dataclass(frozen=True)
class RolloutShape:
    tp: int = 8
    """SGLang tensor parallel size of one engine (EP inside it for MoE)."""
    mem_fraction_static: float = 0.8
    """SGLang's share of GPU memory for weights + KV cache."""
    longest_sequence: int = 32768 + 1024
    """Prompt + generated tokens of the longest sample."""
    concurrent_sequences: int = 16
    """Sequences each engine must hold at full length at once (a prompt's group, at least)."""
    weight_bytes: int = 2


@dataclass
class Term:
    name: str
    gib: float
    """The value: GiB, or the unit named by `unit`."""
    note: str = ""
    unit: str = "GiB"


@dataclass
class Plan:
    gpu: str
    gpu_gib: float
    train: list[Term] = field(default_factory=list)
    rollout: list[Term] = field(default_factory=list)
    host: list[Term] = field(default_factory=list)
    sync: list[Term] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def train_gib(self) -> float:
        return sum(t.gib for t in self.train)

    @property
    def rollout_gib(self) -> float:
        return sum(t.gib for t in self.rollout if not t.name.startswith("  of which"))  # parts of the pool

    @property
    def peak_gib(self) -> float:
        """Colocated: the training state is offloaded while the engine generates and the engine's
        memory released while training runs, so the step's peak is the larger phase."""
        return max(self.train_gib, self.rollout_gib)

    @property
    def fits(self) -> bool:
        return not self.problems and self.peak_gib <= self.gpu_gib


def layer_activation_bytes(m: ModelConfig, p: ParallelConfig, layer: int, *, act_bytes: int = 2) -> float:
    """Activation bytes one token leaves saved for backward in one layer on one GPU (no recompute),
    flash attention (no s x s scores). Sequence parallelism splits the norm/residual part over TP."""
    h, tp = m.hidden_size, p.tp
    sp = tp if p.sequence_parallel else 1
    if m.multi_latent_attention:
        q = m.num_attention_heads * (m.qk_head_dim + m.qk_pos_emb_head_dim)
        k = q
        v = m.num_attention_heads * m.v_head_dim
        latent = (m.q_lora_rank or 0) + m.kv_lora_rank + m.qk_pos_emb_head_dim
    else:
        g = m.num_query_groups or m.num_attention_heads
        q, k, v = m.num_attention_heads * m.head_dim, g * m.head_dim, g * m.head_dim
        latent = 0
    attn = (
        2 * h / sp  # input norm in/out
        + latent  # MLA latents (down-projection outputs, replicated)
        + (q + k + v) / tp  # q, k, v
        + v / tp  # core attention output (proj input); flash keeps only softmax stats
        + 4 * m.num_attention_heads / tp  # fp32 log-sum-exp per head
        + h / sp  # residual
    )
    moe = m.is_moe and layer >= m.moe_first_k_dense
    if not moe:
        mlp = 2 * h / sp + 3 * m.ffn_hidden_size / tp  # norm in/out, fc1 out [gate; up], act out
    else:
        k_ = m.moe_router_topk
        e_ffn = m.moe_ffn_hidden_size
        mlp = (
            2 * h / sp  # norm in/out
            + 4 * m.num_experts / act_bytes  # fp32 router logits
            + 2 * k_ * h / tp  # dispatched tokens in and expert output (alltoall over EP)
            + k_ * 3 * e_ffn / p.expert_tp  # experts' fc1 out and act out
        )
        if m.moe_shared_expert_intermediate_size:
            mlp += 3 * m.moe_shared_expert_intermediate_size / tp
    return act_bytes * (attn + mlp)


def _recomputed_layer_bytes(m: ModelConfig, p: ParallelConfig, layer: int, act_bytes: int) -> float:
    """Per-token bytes a layer keeps under the configured recompute."""
    full = layer_activation_bytes(m, p, layer, act_bytes=act_bytes)
    sp = p.tp if p.sequence_parallel else 1
    if p.recompute_granularity == "full":
        return act_bytes * m.hidden_size / sp  # only the layer input
    if p.recompute_granularity == "selective":
        mods = set(p.recompute_modules or ["core_attn"])
        saved = full
        h, tp = m.hidden_size, p.tp
        moe = m.is_moe and layer >= m.moe_first_k_dense
        if "mlp" in mods and not moe:
            saved -= act_bytes * 3 * m.ffn_hidden_size / tp
        if "moe" in mods and moe:
            saved -= act_bytes * (2 * m.moe_router_topk * h / tp + m.moe_router_topk * 3 * m.moe_ffn_hidden_size / p.expert_tp)
        if "layernorm" in mods:
            saved -= act_bytes * 2 * h / sp
        return max(saved, act_bytes * h / sp)
    return full


def _in_flight_chunks(p: ParallelConfig, num_microbatches: int) -> tuple[float, int]:
    """(microbatches whose activations the first pipeline rank holds at the peak, chunks per rank)."""
    vpp = p.vpp if (p.vpp or 1) > 1 else 1
    if p.pp == 1:
        return 1, 1
    if vpp == 1:
        return min(p.pp, num_microbatches), 1
    # megatron's interleaved warm-up on rank 0: (pp-1)*2 + (vpp-1)*pp chunk forwards, + the current
    warm = min((p.pp - 1) * 2 + (vpp - 1) * p.pp + 1, num_microbatches * vpp)
    return warm / vpp, vpp  # in units of "all of the rank's chunks" for one microbatch


def plan_memory(
    m: ModelConfig,
    p: ParallelConfig,
    *,
    world_size: int,
    gpu: str,
    train: TrainShape,
    rollout: RolloutShape | None = None,
    cpu_offload: bool = False,
    offload_fraction: float = 1.0,
    link_gbps: float = 400.0,
    gpus_per_node: int = 8,
    spec: Literal["te", "local"] = "te",
) -> Plan:
    """`spec`: the layer spec the job runs. "te" (transformer-engine, flash attention: GPUs with TE)
    uses `layer_activation_bytes`, not yet checked against a GPU; "local" (no TE: CPU, or a GPU
    without it) uses r1mega.plan.local_activations, checked on CPU to 10% (dense models; MoE/MLA
    fall back to the "te" formula)."""
    from r1mega.configlib import ConfigError

    if gpu not in GPUS:
        raise ConfigError(f"--gpu: unknown GPU {gpu!r} (known: {', '.join(GPUS)})")
    p.check_world_size(world_size)
    p.check_model(m)
    gpu_gib = GPUS[gpu]
    plan = Plan(gpu=gpu, gpu_gib=gpu_gib)
    dp = world_size // p.model_parallel_size
    edp = world_size // (p.pp * p.ep * p.expert_tp)
    stage = max(range(p.pp), key=lambda r: rank_params(m, p, r).total)
    rp = rank_params(m, p, stage)
    pb = train.params_bytes
    grad_bytes = 4 if p.grad_reduce_in_fp32 else pb
    state_bytes = (4 if pb != 4 else 0) + 8  # fp32 main params (bf16 training) + Adam m, v
    shard_dense = dp if p.use_distributed_optimizer else 1
    shard_expert = edp if p.use_distributed_optimizer else 1
    optimizer = (rp.dense / shard_dense + rp.expert / shard_expert) * state_bytes
    offloaded = optimizer * offload_fraction if cpu_offload else 0.0
    plan.train += [
        Term("weights", rp.total * pb / GiB, f"stage {stage}: {rp.total / 1e9:.2f}B params ({rp.layers} layers)"),
        Term("gradients", rp.total * grad_bytes / GiB, f"{grad_bytes} B/param"),
        Term("optimizer (main params + Adam)", (optimizer - offloaded) / GiB,
             f"{state_bytes} B/param / DP {shard_dense}, EDP {shard_expert}" + (", offloaded" if cpu_offload else "")),
    ]
    tokens = train.micro_batch_tokens / p.cp
    from r1mega.plan.local_activations import StepShape, local_rank_peak_bytes, local_spec_supported

    if spec == "local" and local_spec_supported(m, p):
        seq = train.seq_length or train.micro_batch_tokens
        shape = StepShape(micro_batch_size=max(train.micro_batch_tokens // seq, 1), seq_length=seq,
                          num_microbatches=train.num_microbatches, act_bytes=pb)
        peaks = {r: local_rank_peak_bytes(m, p, shape, r) for r in range(p.pp)}
        rank = max(peaks, key=lambda r: max(peaks[r].values()))
        point = max(peaks[rank], key=peaks[rank].get)
        plan.train.append(Term("activations + transients (local spec)", peaks[rank][point] / GiB,
                               f"pp rank {rank}, peak at {point}; recompute={p.recompute_granularity}"))
        plan.train.append(Term("CUDA context + NCCL", CUDA_CONTEXT_AND_NCCL_GIB, "estimate (see CUDA_CONTEXT_AND_NCCL_GIB)"))
    else:
        _te_activation_terms(plan, m, p, train, tokens, pb)
    _rollout_and_host_terms(plan, m, p, rp, pb, grad_bytes, optimizer, gpu_gib, rollout, link_gbps, gpus_per_node)
    return plan


def _te_activation_terms(plan: Plan, m: ModelConfig, p: ParallelConfig, train: TrainShape, tokens: float, pb: int) -> None:
    """The GPU (transformer-engine, flash attention) activation formula: unverified on a GPU."""
    first_layers = stage_layers(m, p, 0)
    in_flight, _ = _in_flight_chunks(p, train.num_microbatches)
    saved = sum(_recomputed_layer_bytes(m, p, i, pb) for i in first_layers) * tokens
    recompute_peak = 0.0
    if p.recompute_granularity == "full" and first_layers:
        recompute_peak = max(layer_activation_bytes(m, p, i, act_bytes=pb) for i in first_layers) * tokens
    plan.train.append(Term("activations", (saved * in_flight + recompute_peak) / GiB,
                           f"{in_flight:g} microbatch(es) in flight x {tokens:.0f} tokens, recompute={p.recompute_granularity}"))
    if m.is_moe:
        dispatch = 2 * tokens * m.moe_router_topk * m.hidden_size * pb / p.tp
        plan.train.append(Term("MoE dispatch buffers", dispatch / GiB, "alltoall send + receive of one layer"))
    vocab = m.padded_vocab_size(p.tp) // p.tp
    plan.train.append(Term("logits (last stage)", tokens * vocab * 4 / GiB, "fp32, one microbatch"))
    plan.train.append(Term("CUDA context + NCCL", CUDA_CONTEXT_AND_NCCL_GIB, "estimate (see CUDA_CONTEXT_AND_NCCL_GIB)"))


def _rollout_and_host_terms(plan: Plan, m: ModelConfig, p: ParallelConfig, rp, pb: int, grad_bytes: int,
                            optimizer: float, gpu_gib: float, rollout: Optional[RolloutShape],
                            link_gbps: float, gpus_per_node: int) -> None:
    from r1mega.models.param_count import count_parameters

    total_params = count_parameters(m)
    if rollout is not None:
        weights = total_params * rollout.weight_bytes / rollout.tp
        pool = rollout.mem_fraction_static * gpu_gib * GiB
        kv_token = _kv_bytes_per_token(m, rollout)
        need_kv = kv_token * rollout.longest_sequence * rollout.concurrent_sequences
        plan.rollout += [
            Term("SGLang static pool", pool / GiB, f"mem_fraction_static={rollout.mem_fraction_static}"),
            Term("  of which weights", weights / GiB, f"rollout TP {rollout.tp}"),
            Term("  of which KV cache", (pool - weights) / GiB,
                 f"{kv_token / 1024:.1f} KiB/token; {rollout.concurrent_sequences} x {rollout.longest_sequence} tokens need {need_kv / GiB:.1f} GiB"),
            Term("CUDA graphs", CUDA_GRAPHS_GIB, "estimate (see CUDA_GRAPHS_GIB)"),
            Term("CUDA context + NCCL", CUDA_CONTEXT_AND_NCCL_GIB, "estimate"),
        ]
        if weights > pool:
            plan.problems.append(
                f"rollout: weights at rollout TP {rollout.tp} ({weights / GiB:.1f} GiB) exceed the "
                f"static pool ({pool / GiB:.1f} GiB); raise the rollout TP or mem_fraction_static"
            )
        elif pool - weights < need_kv:
            plan.problems.append(
                f"rollout: KV cache {(pool - weights) / GiB:.1f} GiB holds fewer than "
                f"{rollout.concurrent_sequences} sequences of {rollout.longest_sequence} tokens "
                f"({need_kv / GiB:.1f} GiB); raise the rollout TP or mem_fraction_static"
            )
    from r1mega.training.checkpoint_budget import SAVE_OVERHEAD_FRACTION, save_transient_bytes

    rank_state = rp.total * (pb + grad_bytes) + optimizer
    host_train = rank_state * gpus_per_node
    plan.host += [
        Term("training state offloaded during rollout", host_train / GiB, f"{gpus_per_node} GPUs per node"),
        Term("checkpoint save/load transient", save_transient_bytes(int(rank_state)) * gpus_per_node / GiB,
             f"measured bound: {SAVE_OVERHEAD_FRACTION:g} x each rank's state + 128 MiB (docs/checkpoints.md)"),
    ]
    sync_bytes = total_params * 2
    plan.sync += [
        Term("weight sync bytes (bf16, whole model)", sync_bytes / GiB, ""),
        Term("weight sync time", sync_bytes * 8 / (link_gbps * 1e9), f"at {link_gbps:g} Gbit/s", unit="s"),
    ]


def _kv_bytes_per_token(m: ModelConfig, r: RolloutShape) -> float:
    if m.multi_latent_attention:
        # SGLang's MLA cache: the compressed latent + rope key per layer, replicated over TP
        return m.num_layers * (m.kv_lora_rank + m.qk_pos_emb_head_dim) * r.weight_bytes
    g = m.num_query_groups or m.num_attention_heads
    return m.num_layers * 2 * g * m.head_dim * r.weight_bytes / min(r.tp, g)
