"""Torch reference of `policy_loss`: the per-token math in plain autograd ops.

It is what runs off-GPU and the Triton kernel's cross-check. The gradient conventions are those
of autograd on these expressions (torch.clamp passes gradient on its closed interval,
torch.maximum splits it at exact ties, where both branches agree anyway).
"""

from __future__ import annotations

from typing import Optional

import torch

from r1mega.kernels.policy_loss import NUM_STATS, PolicyLossOptions, finish_metrics

__all__ = ["policy_loss_torch", "per_token_terms"]


def _masked_row_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    tokens = mask.sum(dim=1)
    return torch.where(tokens > 0, (x * mask).sum(dim=1) / tokens.clamp_min(1e-20), torch.zeros_like(tokens))


def per_token_terms(
    logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    old_logp: Optional[torch.Tensor],
    ref_logp: Optional[torch.Tensor],
    rollout_logp: Optional[torch.Tensor],
    entropy: Optional[torch.Tensor],
    opts: PolicyLossOptions,
) -> dict[str, torch.Tensor]:
    """Per-token [B, L] loss (differentiable) and the per-token quantities behind the metrics."""
    cdt = torch.float64 if logp.dtype == torch.float64 else torch.float32
    lp = logp.to(cdt)
    old = lp.detach() if old_logp is None else old_logp.detach().to(cdt)
    adv = advantages.detach().to(cdt)
    adv = adv.unsqueeze(1).expand_as(lp) if adv.dim() == 1 else adv
    c = opts.log_ratio_clamp
    log_r_tok = lp - old
    if opts.ratio_level == "sequence":
        seq = _masked_row_mean(log_r_tok.detach(), mask.to(cdt))  # [B], detached (GSPO-token)
        log_r = lp - lp.detach() + seq.unsqueeze(1)
    else:
        log_r = log_r_tok
    ratio = torch.exp(torch.clamp(log_r, -c, c))
    lo, hi = 1.0 - opts.clip_eps_low, 1.0 + opts.clip_eps_high
    ratio_clipped = torch.clamp(ratio, lo, hi)
    zero = torch.zeros_like(lp)
    dual = torch.zeros_like(lp, dtype=torch.bool)
    if opts.loss_type == "ppo_clip":
        pg = torch.maximum(-adv * ratio, -adv * ratio_clipped)
        clip_low = (adv < 0) & (ratio.detach() < lo)
        clip_high = (adv > 0) & (ratio.detach() > hi)
        if opts.dual_clip_c is not None:
            cap = -adv * opts.dual_clip_c
            dual = (adv < 0) & (pg.detach() > cap)
            pg = torch.where(adv < 0, torch.minimum(pg, cap), pg)
    else:  # cispo
        pg = -ratio_clipped.detach() * adv * lp
        clip_low = ratio.detach() < lo
        clip_high = ratio.detach() > hi
    tis_w = tis_capped = zero
    if opts.tis_cap is not None:
        raw = torch.exp(torch.clamp(old - rollout_logp.detach().to(cdt), -c, c))
        tis_w = torch.clamp(raw, max=opts.tis_cap)
        tis_capped = (raw > opts.tis_cap).to(cdt)
        pg = pg * tis_w
    loss = pg
    kl = zero
    if opts.kl_type is not None and ref_logp is not None:
        ref = ref_logp.detach().to(cdt)
        if opts.kl_type == "k1":
            kl = lp - ref
        elif opts.kl_type == "k2":
            kl = 0.5 * (lp - ref) ** 2
        else:
            x = torch.clamp(ref - lp, -c, c)
            kl = torch.exp(x) - x - 1.0
            if opts.kl_type == "low_var_kl":
                kl = torch.clamp(kl, -opts.kl_clamp, opts.kl_clamp)
        loss = loss + opts.kl_coef * kl
    ent = zero
    if entropy is not None:
        ent = entropy.to(cdt)
        loss = loss - opts.entropy_coef * ent
    lt = torch.clamp(log_r_tok.detach(), -c, c)
    return {
        "loss": loss,
        "pg": pg.detach(),
        "kl": kl.detach(),
        "entropy": ent.detach(),
        "ratio": ratio.detach(),
        "clip_low": clip_low.to(cdt),
        "clip_high": clip_high.to(cdt),
        "dual": dual.to(cdt),
        "approx_kl": torch.exp(lt) - 1.0 - lt,
        "tis_w": tis_w.detach(),
        "tis_capped": tis_capped,
    }


def policy_loss_torch(logp, advantages, mask, old_logp, ref_logp, rollout_logp, entropy, opts, seq_scale):
    """Inputs validated by `policy_loss`; returns (loss, metrics)."""
    terms = per_token_terms(logp, advantages, mask, old_logp, ref_logp, rollout_logp, entropy, opts)
    m = mask.to(terms["loss"].dtype)
    order = ("loss", "pg", "kl", "entropy", "ratio", "clip_low", "clip_high", "dual", "approx_kl",
             "tis_w", "tis_capped")
    rowsums = torch.stack([m.sum(1)] + [(terms[k] * m).sum(1) for k in order], dim=1)  # [B, NSTAT]
    assert rowsums.shape[1] == NUM_STATS
    has_ref = opts.kl_type is not None and ref_logp is not None
    loss, metrics = finish_metrics(rowsums, seq_scale.to(rowsums.dtype), opts, entropy is not None, has_ref)
    return loss, metrics
