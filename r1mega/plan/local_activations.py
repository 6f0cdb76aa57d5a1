"""Activation memory of one training step when the local (non-transformer-engine) layer spec runs:
the spec r1mega builds on CPU and on any GPU without transformer-engine. Every term is a tensor that
megatron-core 0.16.1's local-spec code path keeps for backward (or creates as a transient), named
after the op that makes it; tests/test_plan_accuracy.py checks the sum against the storages really
created (r1mega/plan/measure.py) on CPU.

What is counted (bytes, on one rank, for one pipeline stage): the saved tensors of every
microbatch in flight, the stage's input and output, the last stage's logits and the output layer's
backward transients. Parameters, gradient buffers and optimizer state are not in it:
they exist before the step and are counted by the planner's other lines.

Models with the local spec's SDPA core attention (r1mega/models/cpu_spec.py): dense (llama, qwen2, qwen3) and qwen3_moe-like
MoE layers without TP/EP (with EP the tokens a rank's experts get depend on the routing) and
without full recompute. MLA (SDPA core attention, DeepSeek-V3) is not modelled here; the planner
keeps its GPU formula for what is not (`local_spec_supported`).
"""

from __future__ import annotations

from dataclasses import dataclass

from r1mega.models.config import ModelConfig
from r1mega.parallel.config import ParallelConfig

__all__ = ["StepShape", "local_spec_supported", "local_step_activation_bytes", "local_layer_saved_bytes"]


@dataclass(frozen=True)
class StepShape:
    micro_batch_size: int
    seq_length: int
    num_microbatches: int
    act_bytes: int = 4
    """Bytes per activation element: the parameter dtype (4 for fp32, 2 for bf16)."""


def local_spec_supported(m: ModelConfig, p: ParallelConfig) -> bool:
    """What this model derives: the local spec's SDPA core attention (no MLA), no context
    parallelism, recompute none, full, or selective of core_attn only; MoE only as below."""
    if m.multi_latent_attention or p.cp != 1:
        return False
    if m.is_moe and not (
        p.tp == 1 and p.ep == 1 and m.moe_first_k_dense == 0 and not m.moe_shared_expert_intermediate_size
        and m.moe_router_score_function == "softmax" and p.recompute_granularity != "full"
    ):
        # with EP the tokens each rank's experts receive depend on the routing; TP, shared experts,
        # dense first layers and the re-run MoE layer of full recompute (measured 12% above this
        # model: the re-run dispatch's copies) are not derived here
        return False
    return p.recompute_granularity != "selective" or set(p.recompute_modules or ["core_attn"]) == {"core_attn"}


def _mlp_saved_bytes(m: ModelConfig, p: ParallelConfig, shape: StepShape) -> float:
    """What the MLP (dense) or MoE layer (qwen3_moe-like: softmax router, alltoall dispatcher, no
    TP/EP, no shared expert) keeps for backward for one microbatch."""
    a = shape.act_bytes
    t = shape.micro_batch_size * shape.seq_length
    if not m.is_moe:
        # MLP with gated_linear_unit (mlp.py glu): linear_fc1 output [gate; up] (2F), silu(gate)
        # (F), up + glu_linear_offset (a new tensor, F), their product (F: linear_fc2's input)
        return a * t * 5 * (m.ffn_hidden_size // p.tp)
    k, experts, e_ffn, h = m.moe_router_topk, m.num_experts, m.moe_ffn_hidden_size, m.hidden_size
    routed = t * k  # token copies the experts process (all experts are local without EP)
    return (
        # TopKRouter: top-k indices (int64), softmax of the top-k scores, the scattered probs [t, E]
        # and the routing map (bool)
        8 * routed + a * routed + a * t * experts + t * experts
        # MoEAlltoAllTokenDispatcher / permute: the routing map's and the probs' transposed copies,
        # the sorted token indices (int64), the permuted tokens [t * k, h] and their probs
        + t * experts + a * t * experts + 8 * routed + a * routed * h + a * routed + 8 * experts
        # SequentialMLP: each expert's glu (fc1 output 2F, silu F, up + offset F, product F) and
        # the product scaled by the token's routing prob (per_token_scale, F)
        + a * routed * 6 * e_ffn
    )


def local_layer_saved_bytes(m: ModelConfig, p: ParallelConfig, shape: StepShape, *, recompute: str) -> float:
    """Bytes one transformer layer keeps for backward for one microbatch, local spec.

    recompute: "none", "core_attn" (megatron's default selective recompute), or "full" (the layer
    keeps only its input; see `local_step_activation_bytes` for the recompute transient).
    """
    a = shape.act_bytes
    b, s = shape.micro_batch_size, shape.seq_length
    tp = p.tp
    sp = tp if p.sequence_parallel else 1
    h = m.hidden_size
    heads = m.num_attention_heads // tp
    groups = (m.num_query_groups or m.num_attention_heads) // tp
    hn = m.head_dim
    q, kv = heads * hn, groups * hn
    t = b * s  # tokens of the microbatch (the whole sequence: attention and MLP see s, not s/tp)
    t_sp = t // sp  # tokens of the norm / residual region under sequence parallelism
    if recompute == "full":
        # CheckpointFunction saves the layer input only (TransformerBlock._checkpointed_forward)
        return a * t_sp * h
    total = 0.0
    # input_layernorm (torch RMSNorm): x * rsqrt(mean(x^2)) and its output (x * rsqrt * weight),
    # rsqrt per token; the layer input x is counted as the previous layer's output
    total += a * t_sp * (2 * h + 1)
    # SelfAttention.get_query_key_value_tensors: mixed_qkv (linear_qkv's output) is split into
    # views; the value stays a view of it and is saved (by SDPA, or by the core_attn recompute
    # checkpoint), so all of it stays alive
    total += a * t * (q + 2 * kv)
    if m.qk_layernorm:
        # HeadNorm on q (input: the reshape copy) and k (a view of mixed_qkv): x * rsqrt and rsqrt
        total += a * t * q  # the query reshape copy, saved as q_layernorm's input
        total += a * t * (q + heads)  # q_layernorm: x * rsqrt, rsqrt per head
        total += a * t * (kv + groups)  # k_layernorm: x * rsqrt, rsqrt per group
    # apply_rotary_pos_emb (_apply_rotary_pos_emb_bshd): cos(freqs) * mscale and sin(freqs) * mscale
    # of [s, 1, 1, hn] for q and for k; its output for q (torch.cat of rotate_half) is saved by the
    # attention matmul
    total += a * 4 * s * hn
    total += a * t * q  # rotated query (saved by SDPA, or by the core_attn checkpoint)
    total += a * t * kv  # rotated key (a new tensor; GQA needs no copies: SDPA's enable_gqa)
    if recompute != "core_attn":
        # SDPA (the CPU flash kernel) saves its output and the fp32 log-sum-exp [b, heads, s]; no
        # [s, s] scores are kept
        total += 4 * t * heads
    # the core attention output: the kernel writes it [b, s, heads, hn], so the [s, b, heads * hn]
    # that linear_proj saves is a view of it (of the checkpoint's output under core_attn recompute)
    total += a * t * q
    # residual add after attention (input of pre_mlp_layernorm), with its norm as above
    total += a * t_sp * h + a * t_sp * (2 * h + 1)
    total += _mlp_saved_bytes(m, p, shape)
    # residual add after the MLP: the layer output
    total += a * t_sp * h
    return total


def _recompute_mode(p: ParallelConfig) -> str:
    if p.recompute_granularity == "full":
        return "full"
    if p.recompute_granularity == "selective":
        mods = set(p.recompute_modules or ["core_attn"])
        if mods - {"core_attn"}:
            raise ValueError(f"local activation model: selective recompute of {sorted(mods - {'core_attn'})} is not modelled")
        return "core_attn"
    return "none"


def local_step_activation_bytes(m: ModelConfig, p: ParallelConfig, shape: StepShape, *, stage_layers: int,
                                last_stage: bool, in_flight: float) -> dict[str, float]:
    """Bytes alive on one pipeline stage at each candidate peak of its step (local spec); the
    step's peak is the largest. All three points are in the backward of the first microbatch to
    come back, when every in-flight microbatch's saved tensors are still alive:

    - "output layer backward" (last stage): the logits and the output layer's gradients;
    - "last layer MLP backward": the MLP's input gradients, with the layer re-run under full
      recompute;
    - "last layer attention backward": SDPA's backward, its gradients of q, k and v (with the
      recomputed attention under selective core_attn recompute).
    """
    a = shape.act_bytes
    b, s = shape.micro_batch_size, shape.seq_length
    tp = p.tp
    sp = tp if p.sequence_parallel else 1
    t, t_sp = b * s, b * s // sp
    h = m.hidden_size
    heads = m.num_attention_heads // tp
    groups = (m.num_query_groups or m.num_attention_heads) // tp
    q = heads * m.head_dim
    ffn = m.ffn_hidden_size // tp
    recompute = _recompute_mode(p)
    layer = local_layer_saved_bytes(m, p, shape, recompute=recompute)
    per_mb = (
        stage_layers * layer
        + a * t_sp * h  # the stage input: the embedding's transposed copy, or the received activation
        + a * s * m.head_dim  # RotaryEmbedding.forward: the freqs table [s, hn] (torch.cat)
    )
    held = per_mb * in_flight
    # on the last stage the last layer's output is freed once final_layernorm's backward has run;
    # elsewhere the schedule keeps the stage output until its backward_step
    out_freed = a * t_sp * h if last_stage else 0.0
    grad_in = a * t_sp * h  # the gradient arriving at the last layer (from the final norm or the next stage)
    in_backward = local_layer_saved_bytes(m, p, shape, recompute="none") if recompute == "full" else 0.0
    if last_stage and m.tie_word_embeddings and p.pp == 1:
        # tied embeddings on one stage: output_layer's weight gradient is the embedding's too, so
        # autograd's AccumulateGrad (and megatron DDP's hook that moves it into main_grad) waits
        # for the embedding's backward: the [V/tp, h] gradient stays alive through the layers'
        # backward
        in_backward += a * (m.padded_vocab_size(tp) // tp) * h
    points = {}
    if last_stage:
        vocab = m.padded_vocab_size(tp) // tp
        points["output layer backward"] = (
            held
            # final_layernorm (x * rsqrt, output, rsqrt); output_layer's logits [s, b, V/tp], fp32
            # (the vocab-parallel cross entropy works in place on them)
            + a * t_sp * (2 * h + 1) + 4 * t * vocab
            # output_layer backward: the weight gradient [V/tp, h] (before the DDP hook adds it to
            # main_grad) and the input gradient [s, b, h]
            + a * (vocab * h + t * h)
        )
    # MLP backward: linear_fc2's input (silu * up) is released after its backward; the gradients
    # of linear_fc2's input, of silu(gate) and of up are alive together
    # (MoE: the expert gradients are per expert and small next to this; only the arriving gradient)
    mlp = held + in_backward - out_freed + grad_in + (0.0 if m.is_moe else a * t * 2 * ffn)
    if p.sequence_parallel and tp > 1:
        # LinearWithGradAccumulationAndAsyncCommunication.backward under sequence parallelism
        # all-gathers the saved [s/tp, b, h] input of linear_fc1 again for the weight gradient
        mlp += a * t * h
    points["last layer MLP backward"] = mlp
    # attention backward of the last layer: its MLP, pre-MLP norm, residual and context are freed;
    # linear_proj's input gradient, made contiguous for SDPA's backward, which returns the
    # gradients of q, k and v
    after_core = a * t * q + a * t_sp * h + a * t_sp * (2 * h + 1) + _mlp_saved_bytes(m, p, shape)
    kv = groups * m.head_dim
    attn = held + in_backward - out_freed - after_core + grad_in + 2 * a * t * q + a * t * (q + 2 * kv)
    if recompute == "core_attn":
        # the checkpointed core attention is re-run first: its output and log-sum-exp come back
        attn += a * t * q + 4 * t * heads
    points["last layer attention backward"] = attn
    return points


def microbatches_in_flight(p: ParallelConfig, num_microbatches: int, pp_rank: int) -> float:
    """Microbatches whose activations pipeline rank `pp_rank` holds when its first backward starts
    (megatron's schedules): one without a pipeline (forward_backward_no_pipelining runs each
    microbatch's backward right after its forward); pp - rank under 1F1B (its warm-up forwards plus
    the current one); with virtual stages, the interleaved warm-up count in whole-rank units."""
    if p.pp == 1:
        return 1
    vpp = p.vpp if (p.vpp or 1) > 1 else 1
    if vpp == 1:
        return min(p.pp - pp_rank, num_microbatches)
    # get_schedule_table / forward_backward_pipelining_with_interleaving: warm-up chunk forwards
    warm = min((p.pp - pp_rank - 1) * 2 + (vpp - 1) * p.pp + 1, num_microbatches * vpp)
    return warm / vpp


def local_rank_peak_bytes(m: ModelConfig, p: ParallelConfig, shape: StepShape, pp_rank: int) -> dict[str, float]:
    """`local_step_activation_bytes` for pipeline rank `pp_rank` (its layers, its in-flight count)."""
    from r1mega.plan.params import stage_layers

    return local_step_activation_bytes(
        m, p, shape, stage_layers=len(stage_layers(m, p, pp_rank)),
        last_stage=pp_rank == p.pp - 1, in_flight=microbatches_in_flight(p, shape.num_microbatches, pp_rank),
    )
