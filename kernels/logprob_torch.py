"""Chunked torch implementation of the fused log-prob: what `fused_logprob` runs off-GPU.

Same math as the Triton kernels (online log-sum-exp over vocabulary chunks, recompute in backward,
fp32 accumulation), in plain torch ops on [token_chunk, vocab_chunk] blocks, so the CPU training
loop never holds a [N, V] buffer either. Rows whose target is `ignore_index` are dropped before any
work (their log-prob and entropy are 0 by definition), which on padded RL batches saves a large
share of the compute.

Both functions see one rank's shard only; `r1mega.kernels.logprob` combines ranks.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["forward_stats", "backward", "TOKEN_CHUNK", "BLOCK_ELEMENTS"]

# Tokens per block. With BLOCK_ELEMENTS this bounds the logits block at 2 Mi fp32 values (8 MiB,
# L2/L3-sized on current CPUs) while keeping the matmul tall enough for MKL/oneDNN to run at speed.
TOKEN_CHUNK = 1024
# Elements of one [token_chunk, vocab_chunk] logits block; the vocab chunk is this / token chunk.
BLOCK_ELEMENTS = 1 << 21
_MIN_VOCAB_CHUNK = 256


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _vocab_chunk(rows: int) -> int:
    return max(_MIN_VOCAB_CHUNK, BLOCK_ELEMENTS // max(1, rows))


def forward_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    t_local: torch.Tensor,
    valid: torch.Tensor,
    *,
    inv_temp: float,
    n_cols: int,
    need_entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """Per-token (m, s, u, zt) over local columns [0, n_cols); see `r1mega.kernels.vocab_parallel`.

    Rows with valid=False get (0, 1, 0, 0): their outputs are masked later, and a finite lse keeps
    the backward free of NaN.
    """
    cdt = _compute_dtype(hidden)
    n = hidden.shape[0]
    dev = hidden.device
    m = torch.zeros(n, dtype=cdt, device=dev)
    s = torch.ones(n, dtype=cdt, device=dev)
    u = torch.zeros(n, dtype=cdt, device=dev) if need_entropy else None
    zt = torch.zeros(n, dtype=cdt, device=dev)
    rows = valid.nonzero().squeeze(1)  # [n_active]
    if rows.numel() == 0 or n_cols == 0:
        if n_cols == 0:  # no columns on this rank: it contributes nothing to any sum
            m[rows] = float("-inf")
            s[rows] = 0.0
        return m, s, u, zt
    with torch.no_grad():
        h_act, t_act = _active_rows(hidden, t_local, rows, cdt)
        outs = [_stats_rows(h_act[r0 : r0 + TOKEN_CHUNK], weight, t_act[r0 : r0 + TOKEN_CHUNK],
                            inv_temp, n_cols, need_entropy, cdt)
                for r0 in range(0, rows.numel(), TOKEN_CHUNK)]
        for dst, k in ((m, 0), (s, 1), (u, 2), (zt, 3)):
            if dst is not None:
                dst.index_copy_(0, rows, torch.cat([o[k] for o in outs]))
    return m, s, u, zt


def _active_rows(hidden, t_local, rows, cdt):
    """Hidden rows [n_active, H] in the compute dtype and their targets; no copy when all are active."""
    if rows.numel() == hidden.shape[0]:
        return hidden.to(cdt), t_local
    return hidden.index_select(0, rows).to(cdt), t_local.index_select(0, rows)


def _stats_rows(h, weight, t, inv_temp, n_cols, need_entropy, cdt):
    """Online log-sum-exp over vocabulary chunks for one block of tokens."""
    rows = h.shape[0]
    m = torch.full((rows,), float("-inf"), dtype=cdt, device=h.device)
    s = torch.zeros(rows, dtype=cdt, device=h.device)
    u = torch.zeros(rows, dtype=cdt, device=h.device) if need_entropy else None
    zt = torch.zeros(rows, dtype=cdt, device=h.device)
    step = _vocab_chunk(rows)
    for c0 in range(0, n_cols, step):
        c1 = min(n_cols, c0 + step)
        z = torch.mm(h, weight[c0:c1].to(cdt).t())  # [rows, C] logits of this vocab chunk
        z.mul_(inv_temp)
        hit = ((t >= c0) & (t < c1)).nonzero().squeeze(1)
        if hit.numel():
            zt[hit] = z[hit, t[hit] - c0]
        m_new = torch.maximum(m, z.max(dim=1).values)
        delta = m - m_new  # [rows]; -inf on the first chunk, where s = 0
        alpha = torch.exp(delta)
        z.sub_(m_new.unsqueeze(1))  # z - m_new <= 0
        p = torch.exp(z) if need_entropy else z.exp_()  # z is still needed for u
        if need_entropy:
            # u' = alpha (u + (m - m') s) + sum p (z - m'), with the first-chunk 0 * -inf avoided
            shift = torch.where(s > 0, delta, torch.zeros_like(delta))  # s = 0 on the first chunk
            u = alpha * (u + shift * s) + torch.einsum("ij,ij->i", p, z)
        s = alpha * s + p.sum(dim=1)
        m = m_new
        del z, p  # free this block before the next chunk's matmul allocates its own
    return m, s, u, zt


def backward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    t_local: torch.Tensor,
    valid: torch.Tensor,
    lse: torch.Tensor,
    ez: Optional[torch.Tensor],
    g_lp: torch.Tensor,
    g_ent: Optional[torch.Tensor],
    *,
    inv_temp: float,
    n_cols: int,
    need_grad_h: bool,
    need_grad_w: bool,
) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Local (grad_hidden in the accumulation dtype, grad_weight in weight's dtype).

    dL/dx_j = (1/T) [g_lp (1[j = t] - p_j) - g_ent p_j (z_j - E_p[z])] with x = h . w_j, z = x / T;
    grad_h = sum_j dL/dx_j w_j (this rank's part; the caller reduces over TP),
    grad_w_j = sum_n dL/dx_nj h_n, accumulated in fp32 across token chunks.
    """
    cdt = _compute_dtype(hidden)
    n, hdim = hidden.shape
    grad_h = torch.zeros(n, hdim, dtype=cdt, device=hidden.device) if need_grad_h else None
    grad_w = torch.zeros(weight.shape, dtype=cdt, device=weight.device) if need_grad_w else None
    rows = valid.nonzero().squeeze(1)
    if rows.numel() and n_cols:
        with torch.no_grad():
            h_act, _ = _active_rows(hidden, t_local, rows, cdt)  # [n_active, H]
            all_rows = rows.numel() == n
            gh_act = (grad_h if all_rows else torch.zeros_like(h_act)) if need_grad_h else None
            for r0 in range(0, rows.numel(), TOKEN_CHUNK):
                sl = slice(r0, r0 + TOKEN_CHUNK)
                idx = rows[sl]
                _backward_rows(
                    h_act[sl], weight, t_local[idx], lse[idx], None if ez is None else ez[idx],
                    g_lp[idx], None if g_ent is None else g_ent[idx], inv_temp, n_cols, cdt,
                    None if gh_act is None else gh_act[sl], grad_w,
                )
            if need_grad_h and not all_rows:
                grad_h.index_copy_(0, rows, gh_act)
    if grad_w is not None:
        grad_w = grad_w.to(weight.dtype)
    return grad_h, grad_w


def _backward_rows(h, weight, t, lse, ez, g_lp, g_ent, inv_temp, n_cols, cdt, gh, gw):
    rows = h.shape[0]
    step = _vocab_chunk(rows)
    for c0 in range(0, n_cols, step):
        c1 = min(n_cols, c0 + step)
        w = weight[c0:c1].to(cdt)  # [C, H]
        z = torch.mm(h, w.t())  # [rows, C] recomputed logits
        z.mul_(inv_temp)
        if g_ent is not None:
            p = torch.sub(z, lse.unsqueeze(1)).exp_()
            # coef = g_lp + g_ent (z - E[z]);  dz = -p * coef  (+ g_lp at the target)
            z.sub_(ez.unsqueeze(1)).mul_(g_ent.unsqueeze(1)).add_(g_lp.unsqueeze(1))
            dz = p.mul_(z).neg_()
            del p
        else:
            dz = z.sub_(lse.unsqueeze(1)).exp_().mul_(g_lp.unsqueeze(1)).neg_()  # -p g_lp, in place
        hit = ((t >= c0) & (t < c1)).nonzero().squeeze(1)
        if hit.numel():
            dz[hit, t[hit] - c0] += g_lp[hit]
        dz.mul_(inv_temp)  # d/dx = (1/T) d/dz
        if gh is not None:
            gh.addmm_(dz, w)
        if gw is not None:
            gw[c0:c1].addmm_(dz.t(), h)
        del z, dz  # as in the forward: one block alive at a time
