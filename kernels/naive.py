"""The plain, materialised log-prob: logits -> log_softmax -> gather. Test oracle and benchmark baseline.

This is what RL frameworks do without a fused kernel: it allocates [N, V] logits (and their
log-softmax and gradients). Run in float64 it is the tests' reference; run in bf16 it is the
benchmarks' "naive" row. Full (unsharded) weight only.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["naive_logprob"]


def naive_logprob(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    return_entropy: bool = False,
    vocab_size: Optional[int] = None,
    ignore_index: int = -100,
):
    """Same contract as `fused_logprob` at TP=1, via a full [N, V] logits tensor (fp32 or wider)."""
    out_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    logits = (hidden @ weight.t()).to(out_dtype) / temperature  # [N, V]
    if vocab_size is not None and vocab_size < weight.shape[0]:
        logits = logits[:, :vocab_size]  # padded rows are not part of the distribution
    logp_all = torch.log_softmax(logits, dim=-1)  # [N, V]
    valid = targets != ignore_index
    safe_t = torch.where(valid, targets, torch.zeros_like(targets)).to(torch.int64)
    logprob = logp_all.gather(1, safe_t.unsqueeze(1)).squeeze(1)
    zero = torch.zeros((), dtype=out_dtype, device=hidden.device)
    logprob = torch.where(valid, logprob, zero)
    if not return_entropy:
        return logprob
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logprob, torch.where(valid, entropy, zero)
