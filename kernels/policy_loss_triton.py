"""Triton kernel for `policy_loss`: every per-token term, its gradient and the metric sums in one pass.

`_policy_loss_kernel` reads each input once (logp, old/ref/rollout log-probs, advantage, mask,
entropy), computes the ratio, clip / dual clip or CISPO weight, TIS weight, KL estimator and entropy
term, and writes m * d loss_t / d logp_t ([B, L], fp32) plus its program's masked sums of the loss
and of every metric ([B, blocks, NUM_STATS]). The per-response reductions around it are torch
segment sums: before the kernel, |y_i| = sum_t m_it (and, for GSPO, the masked mean log-ratio of
each response, which the sequence ratio needs before any token can be clipped); after it, the
[B, blocks, NUM_STATS] partial sums are summed per response and weighted by c_i (agg_mode).
Backward is one scale of the stored gradient by c_i * grad_output; the entropy gradient,
-entropy_coef * m_it * c_i * grad_output, needs no stored tensor.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from r1mega.kernels._triton_util import check_launchable
from r1mega.kernels.policy_loss import NUM_STATS, PolicyLossOptions, finish_metrics

__all__ = ["policy_loss_triton", "BLOCK_L_GPU"]

# Tokens per program on GPU. The kernel is a stream (~28 B read + 4 B written per token), so the
# block only has to keep enough bytes in flight per SM: 1024 tokens x 7 inputs x 4 B = 28 KiB per
# program, two or more programs per SM at [8, 32768]. A starting point for the GPU sweep.
BLOCK_L_GPU = 1024
_BLOCK_L_INTERPRETER = 16
_KL_IDS = {None: 0, "k1": 1, "k2": 2, "k3": 3, "low_var_kl": 4}


@triton.jit
def _policy_loss_kernel(
    logp_ptr, old_ptr, adv_ptr, mask_ptr, ref_ptr, roll_ptr, ent_ptr, seqlr_ptr,
    grad_ptr, part_ptr,
    L, adv_stride_b, adv_stride_l, num_blocks,
    eps_low, eps_high, dual_c, lr_clamp, kl_coef, kl_clamp, ent_coef, tis_cap,
    HAS_OLD: tl.constexpr, SEQ_RATIO: tl.constexpr, CISPO: tl.constexpr, DUAL_CLIP: tl.constexpr,
    KL_TYPE: tl.constexpr, HAS_ENT: tl.constexpr, HAS_TIS: tl.constexpr,
    NSTAT: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """Per-token loss terms of response b, tokens [blk * BLOCK_L, (blk + 1) * BLOCK_L).

    Forward (per token): r = exp(clamp(log r)), log r = logp - old (or the response's mean);
      ppo_clip: pg = max(-A r, -A clip(r)), dpg/dlogp = -A r 1[-A r >= -A clip(r)] 1[|log r| <= C];
        dual clip (A < 0): pg = min(pg, -c A), gradient 0 where the cap binds;
      cispo: pg = -clip(r) A logp, dpg/dlogp = -clip(r) A;
      TIS: pg, dpg scaled by w = min(exp(old - rollout), cap);
      k1 = logp - ref (d = 1), k2 = (logp - ref)^2 / 2 (d = logp - ref),
      k3 = e^x - x - 1 with x = clamp(ref - logp) (d = 1 - e^x inside the clamp),
      low_var_kl = clamp(k3, +-kl_clamp) (d = 0 where clamped);
      loss = pg + kl_coef k - ent_coef H.
    """
    b = tl.program_id(0)
    blk = tl.program_id(1)
    offs = blk * BLOCK_L + tl.arange(0, BLOCK_L)
    ok = offs < L
    idx = b.to(tl.int64) * L + offs
    lp = tl.load(logp_ptr + idx, mask=ok, other=0.0).to(tl.float32)
    m = tl.load(mask_ptr + idx, mask=ok, other=0.0).to(tl.float32)
    if HAS_OLD:
        old = tl.load(old_ptr + idx, mask=ok, other=0.0).to(tl.float32)
    else:
        old = lp
    adv = tl.load(adv_ptr + b * adv_stride_b + offs * adv_stride_l, mask=ok, other=0.0).to(tl.float32)
    lr_tok = lp - old
    if SEQ_RATIO:
        lr = tl.load(seqlr_ptr + b).to(tl.float32) + tl.zeros([BLOCK_L], tl.float32)
    else:
        lr = lr_tok
    in_range = (lr >= -lr_clamp) & (lr <= lr_clamp)
    ratio = tl.exp(tl.minimum(tl.maximum(lr, -lr_clamp), lr_clamp))
    d_ratio = tl.where(in_range, ratio, 0.0)  # d r / d logp_t
    lo = 1.0 - eps_low
    hi = 1.0 + eps_high
    r_clip = tl.minimum(tl.maximum(ratio, lo), hi)
    dual = tl.zeros([BLOCK_L], tl.float32)
    if CISPO:
        pg = -r_clip * adv * lp
        g = -r_clip * adv
        clip_low = tl.where(ratio < lo, 1.0, 0.0)
        clip_high = tl.where(ratio > hi, 1.0, 0.0)
    else:
        l1 = -adv * ratio
        l2 = -adv * r_clip
        pg = tl.maximum(l1, l2)
        g = tl.where(l1 >= l2, -adv, 0.0) * d_ratio
        clip_low = tl.where((adv < 0) & (ratio < lo), 1.0, 0.0)
        clip_high = tl.where((adv > 0) & (ratio > hi), 1.0, 0.0)
        if DUAL_CLIP:
            cap = -adv * dual_c
            binds = (adv < 0) & (pg > cap)
            pg = tl.where(binds, cap, pg)
            g = tl.where(binds, 0.0, g)
            dual = tl.where(binds, 1.0, 0.0)
    tis_w = tl.zeros([BLOCK_L], tl.float32)
    tis_capped = tl.zeros([BLOCK_L], tl.float32)
    if HAS_TIS:
        roll = tl.load(roll_ptr + idx, mask=ok, other=0.0).to(tl.float32)
        raw = tl.exp(tl.minimum(tl.maximum(old - roll, -lr_clamp), lr_clamp))
        tis_w = tl.minimum(raw, tis_cap)
        tis_capped = tl.where(raw > tis_cap, 1.0, 0.0)
        pg = pg * tis_w
        g = g * tis_w
    loss = pg
    kl = tl.zeros([BLOCK_L], tl.float32)
    if KL_TYPE != 0:
        ref = tl.load(ref_ptr + idx, mask=ok, other=0.0).to(tl.float32)
        diff = lp - ref
        if KL_TYPE == 1:
            kl = diff
            d_kl = tl.full([BLOCK_L], 1.0, tl.float32)
        elif KL_TYPE == 2:
            kl = 0.5 * diff * diff
            d_kl = diff
        else:
            x_raw = ref - lp
            x = tl.minimum(tl.maximum(x_raw, -lr_clamp), lr_clamp)
            ex = tl.exp(x)
            kl = ex - x - 1.0
            d_kl = tl.where((x_raw >= -lr_clamp) & (x_raw <= lr_clamp), 1.0 - ex, 0.0)
            if KL_TYPE == 4:
                d_kl = tl.where((kl >= -kl_clamp) & (kl <= kl_clamp), d_kl, 0.0)
                kl = tl.minimum(tl.maximum(kl, -kl_clamp), kl_clamp)
        loss += kl_coef * kl
        g += kl_coef * d_kl
    ent = tl.zeros([BLOCK_L], tl.float32)
    if HAS_ENT:
        ent = tl.load(ent_ptr + idx, mask=ok, other=0.0).to(tl.float32)
        loss -= ent_coef * ent
    lt = tl.minimum(tl.maximum(lr_tok, -lr_clamp), lr_clamp)
    approx_kl = tl.exp(lt) - 1.0 - lt
    tl.store(grad_ptr + idx, m * g, mask=ok)
    # masked sums of this block, in the STAT_* order of r1mega.kernels.policy_loss
    base = part_ptr + (b * num_blocks + blk) * NSTAT
    tl.store(base + 0, tl.sum(m, axis=0))
    tl.store(base + 1, tl.sum(m * loss, axis=0))
    tl.store(base + 2, tl.sum(m * pg, axis=0))
    tl.store(base + 3, tl.sum(m * kl, axis=0))
    tl.store(base + 4, tl.sum(m * ent, axis=0))
    tl.store(base + 5, tl.sum(m * ratio, axis=0))
    tl.store(base + 6, tl.sum(m * clip_low, axis=0))
    tl.store(base + 7, tl.sum(m * clip_high, axis=0))
    tl.store(base + 8, tl.sum(m * dual, axis=0))
    tl.store(base + 9, tl.sum(m * approx_kl, axis=0))
    tl.store(base + 10, tl.sum(m * tis_w, axis=0))
    tl.store(base + 11, tl.sum(m * tis_capped, axis=0))


class _PolicyLoss(torch.autograd.Function):
    """loss = sum_i c_i sum_t m loss_t; saves m * dloss/dlogp, so backward is a scale."""

    @staticmethod
    def forward(ctx, logp, entropy, grad_tokens, rowsums, seq_scale, mask, ent_coef):
        loss = (seq_scale * rowsums[:, 1]).sum()
        ctx.save_for_backward(grad_tokens, seq_scale, mask)
        ctx.ent_coef = ent_coef
        ctx.logp_dtype = logp.dtype
        ctx.ent_dtype = None if entropy is None else entropy.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        grad_tokens, seq_scale, mask = ctx.saved_tensors
        scale = (seq_scale * grad_out).unsqueeze(1)  # [B, 1]
        g_logp = None
        if ctx.needs_input_grad[0]:
            g_logp = (grad_tokens * scale).to(ctx.logp_dtype)  # same traffic as in place; safe to re-run
        g_ent = None
        if ctx.ent_dtype is not None and ctx.needs_input_grad[1]:
            g_ent = (mask * (-ctx.ent_coef) * scale).to(ctx.ent_dtype)
        return g_logp, g_ent, None, None, None, None, None


def policy_loss_triton(logp, advantages, mask, old_logp, ref_logp, rollout_logp, entropy,
                       opts: PolicyLossOptions, seq_scale):
    """Inputs validated by `policy_loss`; returns (loss, metrics)."""
    check_launchable(logp, _policy_loss_kernel)
    bsz, length = logp.shape
    dev = logp.device
    block = BLOCK_L_GPU if dev.type == "cuda" else _BLOCK_L_INTERPRETER
    n_blocks = triton.cdiv(length, block) if length else 0
    lp = logp.detach().contiguous()
    mask_c = mask.contiguous()
    old = lp if old_logp is None else old_logp.detach().contiguous()
    adv = advantages.detach().contiguous()
    adv_strides = (1, 0) if adv.dim() == 1 else (length, 1)
    use_kl = opts.kl_type is not None and ref_logp is not None
    ref = ref_logp.detach().contiguous() if use_kl else lp
    roll = rollout_logp.detach().contiguous() if opts.tis_cap is not None else lp
    ent = entropy.detach().contiguous() if entropy is not None else lp
    seq_lr = torch.zeros(bsz, dtype=torch.float32, device=dev)
    if opts.ratio_level == "sequence" and old_logp is not None:
        tokens = mask_c.sum(1)  # [B]
        seq_lr = torch.where(tokens > 0, ((lp.float() - old.float()) * mask_c).sum(1) / tokens.clamp_min(1e-20),
                             seq_lr)
    grad_tokens = torch.empty((bsz, length), dtype=torch.float32, device=dev)
    partial = torch.zeros((bsz, max(n_blocks, 1), NUM_STATS), dtype=torch.float32, device=dev)
    if bsz and n_blocks:
        _policy_loss_kernel[(bsz, n_blocks)](
            lp, old, adv, mask_c, ref, roll, ent, seq_lr, grad_tokens, partial,
            length, adv_strides[0], adv_strides[1], n_blocks,
            float(opts.clip_eps_low), float(opts.clip_eps_high),
            float(opts.dual_clip_c if opts.dual_clip_c is not None else 0.0),
            float(opts.log_ratio_clamp), float(opts.kl_coef), float(opts.kl_clamp), float(opts.entropy_coef),
            float(opts.tis_cap if opts.tis_cap is not None else 0.0),
            HAS_OLD=old_logp is not None, SEQ_RATIO=opts.ratio_level == "sequence",
            CISPO=opts.loss_type == "cispo", DUAL_CLIP=opts.dual_clip_c is not None,
            KL_TYPE=_KL_IDS[opts.kl_type] if use_kl else 0, HAS_ENT=entropy is not None,
            HAS_TIS=opts.tis_cap is not None, NSTAT=NUM_STATS, BLOCK_L=block,
        )
    rowsums = partial.sum(dim=1)  # [B, NSTAT] per-response segment sums
    seq_scale = seq_scale.to(torch.float32)
    loss = _PolicyLoss.apply(logp, entropy, grad_tokens, rowsums, seq_scale, mask_c, float(opts.entropy_coef))
    _, metrics = finish_metrics(rowsums, seq_scale, opts, entropy is not None, use_kl)
    return loss, metrics
