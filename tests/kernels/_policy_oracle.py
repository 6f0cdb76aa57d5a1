"""An independent float64 oracle for policy_loss: one response, one token at a time.

Written from the papers' formulas with Python loops and scalar autograd, deliberately unlike the
vectorised implementations it checks. Gradient conventions: clamp passes gradient on its closed
interval; the max/min of the clipped surrogate and the dual clip pick the active branch.
"""

from __future__ import annotations

import math

import torch


def _clamp(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return torch.clamp(x, lo, hi)


def oracle_loss(logp, adv, mask, old, ref, roll, ent, opts, global_denominator=None):
    """(loss, metrics dict of floats); logp / ent are float64 leaves for autograd."""
    B, L = logp.shape
    lp_data = logp.detach()
    c = opts.log_ratio_clamp
    lo, hi = 1.0 - opts.clip_eps_low, 1.0 + opts.clip_eps_high
    seq_sums, seq_tokens = [], []
    sums = {k: 0.0 for k in ("pg_tok", "kl", "ent", "ratio", "clip_low", "clip_high", "dual", "approx_kl",
                             "tis_w", "tis_capped")}
    total_m = 0.0
    pg_seq = []
    for i in range(B):
        tokens = float(mask[i].sum())
        seq_tokens.append(tokens)
        if old is not None and tokens > 0:
            seq_lr = sum(float(mask[i, t]) * float(lp_data[i, t] - old[i, t]) for t in range(L)) / tokens
        else:
            seq_lr = 0.0
        acc = logp.new_zeros(())
        pg_acc = 0.0
        for t in range(L):
            m = float(mask[i, t])
            if m == 0.0:
                continue
            a = float(adv[i] if adv.dim() == 1 else adv[i, t])
            lp = logp[i, t]
            o = lp.detach() if old is None else old[i, t]
            if opts.ratio_level == "sequence":
                # GSPO-token: value = sequence ratio, gradient through this token's logp
                lr_val = seq_lr
                log_r = lp - lp.detach() + lr_val
            else:
                log_r = lp - o
                lr_val = float(log_r.detach())
            r = torch.exp(_clamp(log_r, -c, c))
            rv = float(r.detach())
            if opts.loss_type == "cispo":
                pg = -float(min(max(rv, lo), hi)) * a * lp
                clip_low, clip_high, dual = rv < lo, rv > hi, False
            else:
                unclipped = -a * r
                clipped = -a * _clamp(r, lo, hi)
                pg = unclipped if float(unclipped.detach()) >= float(clipped.detach()) else clipped
                clip_low, clip_high, dual = (a < 0 and rv < lo), (a > 0 and rv > hi), False
                if opts.dual_clip_c is not None and a < 0 and float(pg.detach()) > -a * opts.dual_clip_c:
                    pg = pg.new_tensor(-a * opts.dual_clip_c)  # constant: no gradient
                    dual = True
            tis = 0.0
            capped = 0.0
            if opts.tis_cap is not None:
                raw = math.exp(min(max(float(o) - float(roll[i, t]), -c), c))
                tis = min(raw, opts.tis_cap)
                capped = float(raw > opts.tis_cap)
                pg = pg * tis
            loss_t = pg
            kl_v = 0.0
            if opts.kl_type is not None and ref is not None:
                rf = ref[i, t]
                if opts.kl_type == "k1":
                    kl = lp - rf
                elif opts.kl_type == "k2":
                    kl = 0.5 * (lp - rf) ** 2
                else:
                    x = _clamp(rf - lp, -c, c)
                    kl = torch.exp(x) - x - 1.0
                    if opts.kl_type == "low_var_kl":
                        kl = _clamp(kl, -opts.kl_clamp, opts.kl_clamp)
                loss_t = loss_t + opts.kl_coef * kl
                kl_v = float(kl.detach())
            ent_v = 0.0
            if ent is not None:
                loss_t = loss_t - opts.entropy_coef * ent[i, t]
                ent_v = float(ent[i, t].detach())
            acc = acc + m * loss_t
            pg_acc += m * float(pg.detach())
            lt = min(max(float(lp.detach()) - float(o), -c), c)
            total_m += m
            for k, v in (("kl", kl_v), ("ent", ent_v), ("ratio", rv), ("clip_low", float(clip_low)),
                         ("clip_high", float(clip_high)), ("dual", float(dual)),
                         ("approx_kl", math.exp(lt) - 1.0 - lt), ("tis_w", tis), ("tis_capped", capped)):
                sums[k] += m * v
        seq_sums.append(acc)
        pg_seq.append(pg_acc)
    n_seq = sum(1 for n in seq_tokens if n > 0)
    if opts.agg_mode == "token-mean":
        denom = total_m if global_denominator is None else global_denominator
        weights = [1.0 / denom] * B
    else:
        ns = n_seq if global_denominator is None else global_denominator
        if opts.agg_mode == "seq-mean-token-mean":
            weights = [1.0 / (n * ns) if n > 0 else 0.0 for n in seq_tokens]
        elif opts.agg_mode == "seq-mean-token-sum":
            weights = [1.0 / ns if n > 0 else 0.0 for n in seq_tokens]
        else:
            norm = opts.norm_length or L
            weights = [1.0 / (norm * ns) if n > 0 else 0.0 for n in seq_tokens]
    loss = sum(w * s for w, s in zip(weights, seq_sums))
    metrics = {
        "pg_loss": sum(w * s for w, s in zip(weights, pg_seq)),
        "ratio_mean": sums["ratio"] / total_m,
        "clip_frac_low": sums["clip_low"] / total_m,
        "clip_frac_high": sums["clip_high"] / total_m,
        "approx_kl": sums["approx_kl"] / total_m,
        "num_tokens": total_m,
    }
    if opts.kl_type is not None and ref is not None:
        metrics["kl"] = sums["kl"] / total_m
    if ent is not None:
        metrics["entropy"] = sums["ent"] / total_m
    if opts.dual_clip_c is not None:
        metrics["dual_clip_frac"] = sums["dual"] / total_m
    if opts.tis_cap is not None:
        metrics["tis_weight_mean"] = sums["tis_w"] / total_m
        metrics["tis_clip_frac"] = sums["tis_capped"] / total_m
    return loss, metrics
