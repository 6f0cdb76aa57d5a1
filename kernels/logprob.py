"""`fused_logprob`: per-token log-probs (and entropy) straight from hidden states, no [N, V] logits.

    logprob_n = z_{n,t_n} - logsumexp_j z_nj,     z_nj = (h_n . w_j) / T
    entropy_n = -sum_j p_nj log p_nj = logsumexp_j z_nj - E_p[z_n],   p = softmax(z_n)

Gradients flow to `hidden` and `weight` from both outputs:

    d logprob_n / d z_nj = 1[j = t_n] - p_nj
    d entropy_n / d z_nj = -p_nj (log p_nj + entropy_n) = -p_nj (z_nj - E_p[z_n])

and d/dx = (1/T) d/dz for the raw logits x = h . w. Derivations: docs/kernels.md.

The weight may be one tensor-parallel shard of the output layer (megatron's layout, vocabulary
split over `tp_group`); the result is the same as with the full weight, at the cost of one MAX and
one SUM all-reduce over [N] per-token statistics in forward and one SUM all-reduce of grad_hidden
in backward (see `r1mega.kernels.vocab_parallel`).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from r1mega.kernels.dispatch import resolve_backend
from r1mega.kernels.vocab_parallel import VocabShard, all_reduce_sum, combine_across_ranks

__all__ = ["fused_logprob"]

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def fused_logprob(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    tp_group: Optional[dist.ProcessGroup] = None,
    return_entropy: bool = False,
    vocab_size: Optional[int] = None,
    ignore_index: int = -100,
    sequence_parallel: bool = False,
    backend: Optional[str] = None,
):
    """Log-probs of `targets` under softmax(hidden @ weight^T / temperature), fused.

    Args:
        hidden: [N, H] activations entering the output layer (flatten [S, B, H] first).
        weight: [V_local, H] output-layer weight; with `tp_group`, rank r's rows are global vocab
            rows [r * V_local, (r + 1) * V_local), as megatron shards them.
        targets: [N] global token ids in [0, vocab_size), or `ignore_index`.
        temperature: logits are divided by it (sampling temperature of the rollout).
        tp_group: tensor-parallel group the vocabulary is split over; None = the full vocabulary.
        return_entropy: also return the entropy of softmax(z) per token (differentiable).
        vocab_size: the real global vocabulary; rows at global index >= vocab_size (megatron's
            padding) are excluded from the softmax and get zero gradient. None = V_local * tp.
        ignore_index: targets equal to it get log-prob 0 and entropy 0, and no gradient.
        sequence_parallel: return grad_hidden as this rank's partial sum (the caller's
            sequence-parallel gather reduce-scatters it) instead of all-reducing it over TP.
        backend: "auto" | "triton" | "torch" (see `r1mega.kernels.dispatch`); float64 inputs always
            take the torch path (the kernels accumulate in fp32).

    Returns:
        logprob [N] float32, or (logprob, entropy) [N] float32 each when `return_entropy`.
        Gradients come back in hidden's and weight's dtypes; grad_weight is accumulated in fp32.
    """
    _validate(hidden, weight, targets, temperature)
    impl = resolve_backend(backend, hidden, "fused_logprob")
    if hidden.dtype == torch.float64:
        impl = "torch"  # the kernels compute in fp32; float64 (gradchecks) takes the torch path
    shard = VocabShard.from_group(tp_group, weight.shape[0], vocab_size)
    _validate_targets(targets, shard.vocab_size, ignore_index)
    if impl == "triton":
        from r1mega.kernels import logprob_triton as module
    else:
        from r1mega.kernels import logprob_torch as module
    logprob, entropy = _FusedLogprob.apply(
        hidden, weight, targets, module, shard, tp_group, 1.0 / float(temperature), bool(return_entropy),
        int(ignore_index), bool(sequence_parallel),
    )
    return (logprob, entropy) if return_entropy else logprob


def _validate(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float) -> None:
    if hidden.dim() != 2:
        raise ValueError(f"fused_logprob: hidden must be [N, H], got shape {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"fused_logprob: weight must be [V_local, H] with H = {hidden.shape[1]}, got {tuple(weight.shape)}"
        )
    if targets.dim() != 1 or targets.shape[0] != hidden.shape[0]:
        raise ValueError(
            f"fused_logprob: targets must be [N] with N = {hidden.shape[0]}, got {tuple(targets.shape)}"
        )
    if targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"fused_logprob: targets must be int64 or int32, got {targets.dtype}")
    if hidden.dtype != weight.dtype:
        raise ValueError(f"fused_logprob: hidden ({hidden.dtype}) and weight ({weight.dtype}) dtypes differ")
    if hidden.dtype not in _FLOAT_DTYPES + (torch.float64,):
        raise ValueError(f"fused_logprob: unsupported dtype {hidden.dtype}; use bf16, fp16 or fp32")
    if not (hidden.device == weight.device == targets.device):
        raise ValueError(
            f"fused_logprob: hidden, weight and targets must share a device, got "
            f"{hidden.device}, {weight.device}, {targets.device}"
        )
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"fused_logprob: temperature must be a positive number, got {temperature!r}")


def _validate_targets(targets: torch.Tensor, vocab_size: int, ignore_index: int) -> None:
    """Out-of-range targets would silently read as logit 0: refuse them (one small reduction)."""
    if targets.numel() == 0:
        return
    used = targets != ignore_index
    bad = used & ((targets < 0) | (targets >= vocab_size))
    if bool(bad.any()):
        first = int(targets[bad][0])
        raise ValueError(
            f"fused_logprob: target id {first} is outside [0, vocab_size={vocab_size}) "
            f"and is not ignore_index={ignore_index}"
        )


class _FusedLogprob(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, module, shard, group, inv_temp, need_entropy, ignore_index, seq_par):
        valid = targets != ignore_index  # [N]
        rel = targets.to(torch.int64) - shard.start
        on_shard = valid & (rel >= 0) & (rel < shard.valid_cols)
        t_local = torch.where(on_shard, rel, torch.full_like(rel, -1))  # [N] local column or -1
        m, s, u, zt = module.forward_stats(
            hidden, weight, t_local, valid, inv_temp=inv_temp, n_cols=shard.valid_cols, need_entropy=need_entropy
        )
        m, s, u, zt = combine_across_ranks(shard, group, m, s, u, zt)
        log_s = torch.log(s)
        lse = m + log_s  # [N]
        zero = torch.zeros((), dtype=lse.dtype, device=lse.device)
        logprob = torch.where(valid, zt - lse, zero)
        ez = None
        if need_entropy:
            mean_shift = u / s  # E_p[z] - m
            entropy = torch.where(valid, log_s - mean_shift, zero)
            ez = m + mean_shift  # E_p[z]
        else:
            entropy = torch.empty(0, dtype=lse.dtype, device=lse.device)
            ctx.mark_non_differentiable(entropy)
        out_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        ctx.save_for_backward(hidden, weight, t_local, valid, lse, ez)
        ctx.module, ctx.shard, ctx.group, ctx.inv_temp = module, shard, group, inv_temp
        ctx.seq_par = seq_par
        return logprob.to(out_dtype), entropy.to(out_dtype)

    @staticmethod
    def backward(ctx, grad_logprob, grad_entropy):
        hidden, weight, t_local, valid, lse, ez = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_h or need_w):
            return (None,) * 10
        acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        zero = torch.zeros((), dtype=acc, device=hidden.device)
        if grad_logprob is None:
            g_lp = torch.zeros(hidden.shape[0], dtype=acc, device=hidden.device)
        else:
            g_lp = torch.where(valid, grad_logprob.to(acc), zero)
        g_ent = None
        if ez is not None and grad_entropy is not None and grad_entropy.numel():
            g_ent = torch.where(valid, grad_entropy.to(acc), zero)
        grad_h, grad_w = ctx.module.backward(
            hidden, weight, t_local, valid, lse, ez if g_ent is not None else None, g_lp, g_ent,
            inv_temp=ctx.inv_temp, n_cols=ctx.shard.valid_cols, need_grad_h=need_h, need_grad_w=need_w,
        )
        if grad_h is not None:
            if ctx.shard.world_size > 1 and not ctx.seq_par:
                all_reduce_sum(grad_h, ctx.group)  # each rank holds the sum over its vocab shard
            grad_h = grad_h.to(hidden.dtype)
        return (grad_h, grad_w) + (None,) * 8
