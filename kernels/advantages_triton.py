"""Triton kernels for `group_advantages` (formulas in `r1mega.kernels.advantages`).

`_group_kernel`: one program per group (a group is at most a few hundred rewards, one block):
mean, unbiased std, flat-group test and the per-mode formula in registers. The batch-normalised
modes add `_batch_kernel`, a single program that streams the [B * G] vector three times (mean,
std, normalise); a batch is thousands of floats, so one program is enough and avoids a
cross-program reduction.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from r1mega.kernels._triton_util import check_launchable

__all__ = ["group_advantages_triton"]

_MODE_IDS = {"grpo": 0, "dr_grpo": 1, "rloo": 2, "reinforce++": 3, "reinforce++_baseline": 4}
# Rewards per step of the single-program batch kernel; a step's batch is 10^2-10^5 rewards, so one
# program streaming 1024 at a time costs microseconds and needs no cross-program reduction.
_BATCH_BLOCK = 1024


@triton.jit
def _group_kernel(r_ptr, out_ptr, G, eps, MODE: tl.constexpr, BLOCK_G: tl.constexpr):
    """MODE 0 grpo, 1 dr_grpo, 2 rloo, 4 group-centred values (reinforce++_baseline's first step)."""
    gid = tl.program_id(0)
    offs = tl.arange(0, BLOCK_G)
    ok = offs < G
    r = tl.load(r_ptr + gid * G + offs, mask=ok, other=0.0).to(tl.float32)
    mean = tl.sum(r, axis=0) / G
    hi = tl.max(tl.where(ok, r, float("-inf")), axis=0)
    lo = tl.min(tl.where(ok, r, float("inf")), axis=0)
    centred = tl.where(ok, r - mean, 0.0)
    centred = tl.where(hi > lo, centred, 0.0)  # flat group (incl. G = 1): exactly 0
    if MODE == 0:
        var = tl.sum(centred * centred, axis=0) / tl.maximum(G - 1, 1)
        out = centred / (tl.sqrt(var) + eps)
    elif MODE == 2:
        out = centred * (G / tl.maximum(G - 1, 1))
    else:
        out = centred
    tl.store(out_ptr + gid * G + offs, out, mask=ok)


@triton.jit
def _batch_kernel(x_ptr, out_ptr, n, eps, SUBTRACT_MEAN: tl.constexpr, BLOCK: tl.constexpr):
    """out = (x - mean) / (std + eps) over all n (or x / (std + eps)); 0 if x is constant."""
    offs0 = tl.arange(0, BLOCK)
    total = tl.zeros([BLOCK], tl.float32)
    hi = tl.full([BLOCK], float("-inf"), tl.float32)
    lo = tl.full([BLOCK], float("inf"), tl.float32)
    for start in range(0, n, BLOCK):
        offs = start + offs0
        ok = offs < n
        x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        total += x
        hi = tl.maximum(hi, tl.where(ok, x, float("-inf")))
        lo = tl.minimum(lo, tl.where(ok, x, float("inf")))
    mean = tl.sum(total, axis=0) / n
    flat = tl.max(hi, axis=0) == tl.min(lo, axis=0)
    sq = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n, BLOCK):
        offs = start + offs0
        ok = offs < n
        x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        d = tl.where(ok, x - mean, 0.0)
        sq += d * d
    std = tl.sqrt(tl.sum(sq, axis=0) / tl.maximum(n - 1, 1))
    for start in range(0, n, BLOCK):
        offs = start + offs0
        ok = offs < n
        x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        if SUBTRACT_MEAN:
            x = x - mean
        out = tl.where(flat, 0.0, x / (std + eps))
        tl.store(out_ptr + offs, out, mask=ok)


def group_advantages_triton(rewards: torch.Tensor, group_size: int, *, mode: str, eps: float) -> torch.Tensor:
    """Inputs already validated by `group_advantages`."""
    check_launchable(rewards, _group_kernel)
    r = rewards.contiguous()
    n = r.numel()
    out = torch.empty(n, dtype=torch.float32, device=r.device)
    if mode == "reinforce++":
        _batch_kernel[(1,)](r, out, n, float(eps), SUBTRACT_MEAN=True, BLOCK=_BATCH_BLOCK)
        return out
    block_g = triton.next_power_of_2(group_size)
    _group_kernel[(n // group_size,)](r, out, group_size, float(eps), MODE=_MODE_IDS[mode], BLOCK_G=block_g)
    if mode == "reinforce++_baseline":
        centred = out
        out = torch.empty_like(centred)
        _batch_kernel[(1,)](centred, out, n, float(eps), SUBTRACT_MEAN=False, BLOCK=_BATCH_BLOCK)
    return out
