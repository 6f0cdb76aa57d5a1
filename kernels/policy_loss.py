"""`policy_loss`: the per-token RL policy loss of GRPO and its variants, fused, with metrics.

Layout: responses as a padded [B, L] batch (B responses, L = padded response length) with a float
loss mask [B, L]. Per token (formulas and sources in docs/kernels.md):

    log r = logp - old_logp (token)   or   mean_t m (logp - old_logp) over the response (GSPO)
    r     = exp(clamp(log r, +-log_ratio_clamp))
    ppo_clip: pg = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high)),  for A < 0 also min(pg, -c A)
    cispo:    pg = -sg(clip(r, 1 - eps_low, 1 + eps_high)) A logp
    TIS:      pg *= sg(min(exp(old_logp - rollout_logp), tis_cap))
    loss_t = pg + kl_coef * k(logp, ref_logp) - entropy_coef * entropy

and the scalar loss is sum_{i,t} c_i m_it loss_it with c_i set by `agg_mode`:

    token-mean                c_i = 1 / sum_{i,t} m_it
    seq-mean-token-mean       c_i = 1 / (|y_i| * B')
    seq-mean-token-sum        c_i = 1 / B'
    seq-mean-token-sum-norm   c_i = 1 / (norm_length * B')        (Dr. GRPO)

|y_i| = sum_t m_it and B' = the number of responses with |y_i| > 0; `global_denominator`
replaces sum m (token-mean) or B' (seq modes) when a batch is split over micro-batches or DP ranks.

The sequence-level ratio follows GSPO's token form: its value is the sequence ratio, its gradient
flows through each token's own log-prob (d r / d logp_t = r), the sequence mean being detached.
Gradients go to `logp` and `entropy`; old/ref/rollout log-probs, advantages and the mask are data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch

from r1mega.configlib import ConfigError
from r1mega.kernels.dispatch import resolve_backend

__all__ = ["PolicyLossOptions", "policy_loss", "METRIC_NAMES", "AGG_MODES", "KL_TYPES"]

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
KL_TYPES = ("k1", "k2", "k3", "low_var_kl")
METRIC_NAMES = (
    "pg_loss", "kl", "entropy", "ratio_mean", "clip_frac_low", "clip_frac_high", "dual_clip_frac",
    "approx_kl", "tis_weight_mean", "tis_clip_frac", "num_tokens",
)


@dataclass(kw_only=True)
class PolicyLossOptions:
    """Everything that selects GRPO, Dr.GRPO, DAPO, GSPO, CISPO (RLOO / REINFORCE++ differ only in
    their advantages and use the ppo_clip loss)."""

    loss_type: Literal["ppo_clip", "cispo"] = "ppo_clip"
    """ppo_clip: PPO's clipped surrogate (GRPO, Dr.GRPO, DAPO, GSPO); cispo: clipped, stop-gradient
    importance weight times logp (MiniMax-M1), which keeps a gradient on every token."""
    clip_eps_low: float = 0.2
    """Lower clip: r is clipped at 1 - clip_eps_low (0.2 in GRPO/DAPO; GSPO uses 3e-4)."""
    clip_eps_high: float = 0.2
    """Upper clip: r is clipped at 1 + clip_eps_high (DAPO's clip-higher: 0.28; GSPO: 4e-4)."""
    dual_clip_c: Optional[float] = None
    """Dual-clip bound c > 1 for negative advantages (loss capped at -c A); None = off."""
    ratio_level: Literal["token", "sequence"] = "token"
    """token: r = pi/pi_old per token; sequence: GSPO's length-normalised sequence ratio."""
    kl_type: Optional[Literal["k1", "k2", "k3", "low_var_kl"]] = None
    """Estimator of KL(pi || pi_ref) added to the loss; None = no KL term (Dr.GRPO, DAPO)."""
    kl_coef: float = 0.0
    """Weight of the KL term (DeepSeek-R1-Zero: 0.001)."""
    kl_clamp: float = 10.0
    """low_var_kl only: the per-token k3 value is clamped to [-kl_clamp, kl_clamp]."""
    log_ratio_clamp: float = 20.0
    """Every log-ratio is clamped to +-this before exp (overflow guard; zero gradient beyond)."""
    entropy_coef: float = 0.0
    """Entropy bonus: loss -= entropy_coef * entropy (needs the `entropy` input)."""
    tis_cap: Optional[float] = None
    """Truncated importance sampling cap C for pi_old / pi_rollout (2.0 in the TIS write-up);
    None = off. Needs `rollout_logp`."""
    agg_mode: Literal[
        "token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"
    ] = "token-mean"
    """How per-token losses become one scalar (see the module docstring)."""
    norm_length: Optional[int] = None
    """seq-mean-token-sum-norm's constant divisor; None = L, the padded response length (keep it
    fixed across steps, e.g. the max generation length, to match Dr. GRPO)."""

    def validate(self) -> None:
        where = "policy_loss"
        if self.loss_type not in ("ppo_clip", "cispo"):
            raise ConfigError(f"{where}.loss_type: expected 'ppo_clip' or 'cispo', got {self.loss_type!r}")
        for name in ("clip_eps_low", "clip_eps_high", "kl_coef", "entropy_coef"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{where}.{name}: must be >= 0, got {getattr(self, name)}")
        if self.clip_eps_low > 1:
            raise ConfigError(f"{where}.clip_eps_low: must be <= 1 (ratio floor 1 - eps >= 0), got {self.clip_eps_low}")
        if self.dual_clip_c is not None:
            if self.loss_type != "ppo_clip":
                raise ConfigError(f"{where}.dual_clip_c: only applies to loss_type 'ppo_clip'")
            if not self.dual_clip_c > 1:
                raise ConfigError(f"{where}.dual_clip_c: must be > 1, got {self.dual_clip_c}")
        if self.ratio_level not in ("token", "sequence"):
            raise ConfigError(f"{where}.ratio_level: expected 'token' or 'sequence', got {self.ratio_level!r}")
        if self.kl_type is not None and self.kl_type not in KL_TYPES:
            raise ConfigError(f"{where}.kl_type: expected one of {KL_TYPES} or None, got {self.kl_type!r}")
        if self.kl_coef > 0 and self.kl_type is None:
            raise ConfigError(f"{where}.kl_coef: is {self.kl_coef} but kl_type is None")
        for name in ("kl_clamp", "log_ratio_clamp"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{where}.{name}: must be > 0, got {getattr(self, name)}")
        if self.tis_cap is not None and not self.tis_cap > 0:
            raise ConfigError(f"{where}.tis_cap: must be > 0 or None, got {self.tis_cap}")
        if self.agg_mode not in AGG_MODES:
            raise ConfigError(f"{where}.agg_mode: expected one of {AGG_MODES}, got {self.agg_mode!r}")
        if self.norm_length is not None and self.norm_length < 1:
            raise ConfigError(f"{where}.norm_length: must be >= 1 or None, got {self.norm_length}")

    @property
    def uses_kl(self) -> bool:
        return self.kl_type is not None and self.kl_coef > 0


def policy_loss(
    logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    old_logp: Optional[torch.Tensor] = None,
    ref_logp: Optional[torch.Tensor] = None,
    rollout_logp: Optional[torch.Tensor] = None,
    entropy: Optional[torch.Tensor] = None,
    options: Optional[PolicyLossOptions] = None,
    global_denominator: Optional[float] = None,
    backend: Optional[str] = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(scalar loss, metrics) for one [B, L] batch of responses.

    Args:
        logp: [B, L] log-probs of the sampled tokens under the current policy (differentiable).
        advantages: [B] per response or [B, L] per token.
        mask: [B, L] loss mask (float weights, usually 0/1; bool is accepted).
        old_logp: [B, L] under the policy that generated the batch; None = on-policy (r = 1).
        ref_logp: [B, L] under the reference model; needed when options use a KL term.
        rollout_logp: [B, L] the inference engine's log-probs; needed when options.tis_cap is set.
        entropy: [B, L] per-token entropy (differentiable); needed when entropy_coef > 0, and
            reported as a metric whenever given.
        options: `PolicyLossOptions`; default = GRPO's clipped surrogate, token-mean, no KL.
        global_denominator: total loss-mask weight (token-mean) or number of responses (seq
            modes) over the whole optimiser batch; None = this batch's own.
        backend: "auto" | "triton" | "torch".

    Returns:
        loss (0-dim, float32) and a dict of 0-dim float32 metrics (`METRIC_NAMES`): pg_loss is
        aggregated like the loss; the others are means over masked tokens of this batch.
    """
    opts = options if options is not None else PolicyLossOptions()
    opts.validate()
    mask_f = _validate_inputs(logp, advantages, mask, old_logp, ref_logp, rollout_logp, entropy, opts)
    if global_denominator is not None and not global_denominator > 0:
        raise ValueError(f"policy_loss: global_denominator must be > 0, got {global_denominator}")
    seq_scale = sequence_scale(mask_f, opts, global_denominator)  # [B] c_i
    # the kernel computes in fp32: float64 inputs (oracle tests) take the torch path
    if resolve_backend(backend, logp, "policy_loss") == "triton" and logp.dtype != torch.float64:
        from r1mega.kernels.policy_loss_triton import policy_loss_triton as impl
    else:
        from r1mega.kernels.policy_loss_torch import policy_loss_torch as impl
    return impl(logp, advantages, mask_f, old_logp, ref_logp, rollout_logp, entropy, opts, seq_scale)


def _validate_inputs(logp, advantages, mask, old_logp, ref_logp, rollout_logp, entropy, opts) -> torch.Tensor:
    if logp.dim() != 2:
        raise ValueError(f"policy_loss: logp must be [B, L], got shape {tuple(logp.shape)}")
    shape = tuple(logp.shape)
    for name, t in (("mask", mask), ("old_logp", old_logp), ("ref_logp", ref_logp),
                    ("rollout_logp", rollout_logp), ("entropy", entropy)):
        if t is not None:
            if tuple(t.shape) != shape:
                raise ValueError(f"policy_loss: {name} must have logp's shape {shape}, got {tuple(t.shape)}")
            if t.device != logp.device:
                raise ValueError(f"policy_loss: {name} is on {t.device}, logp on {logp.device}")
    if tuple(advantages.shape) not in (shape[:1], shape):
        raise ValueError(f"policy_loss: advantages must be [B] = {shape[:1]} or [B, L] = {shape}, "
                         f"got {tuple(advantages.shape)}")
    if opts.uses_kl and ref_logp is None:
        raise ValueError(f"policy_loss: kl_type={opts.kl_type!r} with kl_coef={opts.kl_coef} needs ref_logp")
    if opts.tis_cap is not None and rollout_logp is None:
        raise ValueError("policy_loss: tis_cap is set but rollout_logp was not given")
    if opts.entropy_coef > 0 and entropy is None:
        raise ValueError(f"policy_loss: entropy_coef={opts.entropy_coef} needs the entropy input")
    if not logp.is_floating_point():
        raise ValueError(f"policy_loss: logp must be floating point, got {logp.dtype}")
    return mask if mask.is_floating_point() else mask.to(torch.float32)


def sequence_scale(mask: torch.Tensor, opts: PolicyLossOptions, global_denominator: Optional[float]) -> torch.Tensor:
    """c_i [B] (float32) such that loss = sum_i c_i sum_t m_it loss_it for the chosen agg_mode."""
    tokens = mask.sum(dim=1)  # [B] |y_i|
    has = tokens > 0
    if opts.agg_mode == "token-mean":
        denom = tokens.sum() if global_denominator is None else torch.tensor(float(global_denominator))
        return torch.full_like(tokens, 1.0) / denom.to(tokens).clamp_min(1e-20)
    n_seq = has.sum().to(tokens) if global_denominator is None else torch.tensor(float(global_denominator)).to(tokens)
    n_seq = n_seq.clamp_min(1.0)
    if opts.agg_mode == "seq-mean-token-mean":
        per = 1.0 / (tokens.clamp_min(1e-20) * n_seq)
    elif opts.agg_mode == "seq-mean-token-sum":
        per = torch.ones_like(tokens) / n_seq
    else:  # seq-mean-token-sum-norm
        norm = opts.norm_length if opts.norm_length is not None else mask.shape[1]
        per = torch.ones_like(tokens) / (float(norm) * n_seq)
    return torch.where(has, per, torch.zeros_like(per))


def finish_metrics(rowsums: torch.Tensor, seq_scale: torch.Tensor, opts: PolicyLossOptions, has_entropy: bool,
                   has_ref: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss and metrics from per-response sums [B, NSTAT] (layout: `STAT_*` below). Shared by both
    implementations so the two agree by construction on everything after the per-token math."""
    total = rowsums.sum(dim=0)  # [NSTAT]
    tokens = total[STAT_M].clamp_min(1e-20)
    loss = (seq_scale * rowsums[:, STAT_LOSS]).sum()
    nan = torch.full((), float("nan"), dtype=torch.float32, device=rowsums.device)

    def mean(i: int) -> torch.Tensor:
        return (total[i] / tokens).float()

    metrics = {
        "pg_loss": (seq_scale * rowsums[:, STAT_PG]).sum().float(),
        "kl": mean(STAT_KL) if has_ref else nan,
        "entropy": mean(STAT_ENT) if has_entropy else nan,
        "ratio_mean": mean(STAT_RATIO),
        "clip_frac_low": mean(STAT_CLIP_LOW),
        "clip_frac_high": mean(STAT_CLIP_HIGH),
        "dual_clip_frac": mean(STAT_DUAL) if opts.dual_clip_c is not None else nan,
        "approx_kl": mean(STAT_APPROX_KL),
        "tis_weight_mean": mean(STAT_TIS_W) if opts.tis_cap is not None else nan,
        "tis_clip_frac": mean(STAT_TIS_CAPPED) if opts.tis_cap is not None else nan,
        "num_tokens": total[STAT_M].float(),
    }
    return loss, {k: v.detach() for k, v in metrics.items()}


# Per-response sums both implementations produce, in this order (each is sum_t m_it * x_it).
(STAT_M, STAT_LOSS, STAT_PG, STAT_KL, STAT_ENT, STAT_RATIO, STAT_CLIP_LOW, STAT_CLIP_HIGH, STAT_DUAL,
 STAT_APPROX_KL, STAT_TIS_W, STAT_TIS_CAPPED) = range(12)
NUM_STATS = 12
