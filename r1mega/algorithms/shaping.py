"""Reward shaping and advantages between the reward functions and the policy loss.

Pure, vectorised functions; the RL loop calls them in this order on one rollout batch of B prompts
x G responses (each prompt's G responses contiguous):

    keep = informative_groups(accuracy, G)             # DAPO dynamic sampling (on accuracy)
    r = task_rewards + overlong_penalty(lengths, ...)   # DAPO soft overlong punishment (<= 0)
    r = r - kl_reward_penalty(old_logp, ref_logp, ...)  # when algorithm.kl_in == "reward"
    advantages = compute_advantages(r, resolved)        # the preset's group_advantages mode
"""

from __future__ import annotations

import torch

from r1mega.algorithms.config import KL_TYPES, ResolvedAlgorithm
from r1mega.kernels.advantages import group_advantages
from r1mega.kernels.policy_loss import PolicyLossOptions
from r1mega.kernels.policy_loss_torch import per_token_terms

__all__ = ["overlong_penalty", "kl_reward_penalty", "informative_groups", "compute_advantages"]


def overlong_penalty(response_lengths: torch.Tensor, max_new_tokens: int, buffer: int, factor: float) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), added to each response's reward.

    With L_max = max_new_tokens and L_cache = buffer, a response of |y| tokens gets

        0                                   |y| <= L_max - L_cache
        factor * ((L_max - L_cache) - |y|) / L_cache     L_max - L_cache < |y| <= L_max
        -factor                             |y| > L_max

    so the penalty grows linearly from 0 to -factor over the last `buffer` tokens. buffer = 0 is
    no shaping (zeros). Returns float32 [B].
    """
    if response_lengths.dim() != 1:
        raise ValueError(f"overlong_penalty: response_lengths must be [B], got shape {tuple(response_lengths.shape)}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"overlong_penalty: max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not isinstance(buffer, int) or not 0 <= buffer <= max_new_tokens:
        raise ValueError(f"overlong_penalty: buffer must be an integer in [0, max_new_tokens={max_new_tokens}], "
                         f"got {buffer!r}")
    if not factor >= 0:
        raise ValueError(f"overlong_penalty: factor must be >= 0, got {factor}")
    if bool((response_lengths < 0).any()):
        raise ValueError("overlong_penalty: response_lengths must be >= 0")
    lengths = response_lengths.to(torch.float64)
    if buffer == 0:
        return torch.zeros_like(lengths, dtype=torch.float32)
    start = float(max_new_tokens - buffer)  # last length without penalty
    frac = ((lengths - start) / buffer).clamp(0.0, 1.0)  # 0 before the buffer, 1 at L_max and beyond
    return (-factor * frac).to(torch.float32)


def kl_reward_penalty(
    old_logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, kl_type: str, coef: float,
) -> torch.Tensor:
    """coef * sum_t m_t k(old_logp_t, ref_logp_t) per response [B]: the amount subtracted from each
    response's reward when the KL goes into the reward (RLOO / REINFORCE++ style).

    k is the same estimator of KL(pi_old || pi_ref) as the policy loss's KL term (k1, k2, k3,
    low_var_kl; docs/kernels.md), computed by the kernels' own per-token code so the two places
    cannot disagree. No gradient (all inputs are data). Output dtype: float64 for float64 inputs,
    else float32.
    """
    if kl_type not in KL_TYPES:
        raise ValueError(f"kl_reward_penalty: kl_type must be one of {KL_TYPES}, got {kl_type!r}")
    if not coef >= 0:
        raise ValueError(f"kl_reward_penalty: coef must be >= 0, got {coef}")
    if old_logp.dim() != 2:
        raise ValueError(f"kl_reward_penalty: old_logp must be [B, L], got shape {tuple(old_logp.shape)}")
    for name, t in (("ref_logp", ref_logp), ("mask", mask)):
        if t.shape != old_logp.shape:
            raise ValueError(f"kl_reward_penalty: {name} must have old_logp's shape {tuple(old_logp.shape)}, "
                             f"got {tuple(t.shape)}")
    opts = PolicyLossOptions(kl_type=kl_type, kl_coef=coef)
    opts.validate()
    old = old_logp.detach()
    dtype = torch.float64 if old.dtype == torch.float64 else torch.float32
    m = mask.to(dtype)
    zeros = torch.zeros(old.shape[0], dtype=dtype, device=old.device)  # [B] advantages: unused here
    with torch.no_grad():
        # the KL estimator of pi (= old_logp here) against pi_ref, per token [B, L]
        kl = per_token_terms(old.to(dtype), zeros, m, None, ref_logp.detach(), None, None, opts)["kl"]
    return coef * (kl * m).sum(dim=1)  # [B]


def informative_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[B] bool: groups whose G values are not all equal. DAPO's dynamic sampling passes each
    response's accuracy (before any length shaping) and keeps these groups: a group all right or all
    wrong has no learning signal and only dilutes the batch."""
    if rewards.dim() != 1:
        raise ValueError(f"informative_groups: rewards must be [B * G], got shape {tuple(rewards.shape)}")
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"informative_groups: group_size must be a positive int, got {group_size!r}")
    if rewards.numel() % group_size:
        raise ValueError(f"informative_groups: {rewards.numel()} rewards do not split into groups of {group_size}")
    groups = rewards.view(-1, group_size)  # [B, G]
    return groups.amax(dim=1) != groups.amin(dim=1)


def compute_advantages(rewards: torch.Tensor, cfg: ResolvedAlgorithm) -> torch.Tensor:
    """[B * G] rewards -> [B * G] float32 advantages with the algorithm's estimator
    (`r1mega.kernels.group_advantages`; formulas in docs/kernels.md). All-equal groups and groups of
    one give 0 (grpo, dr_grpo); rloo refuses groups of one (its baseline needs another response)."""
    if cfg.advantage_mode == "rloo" and cfg.group_size < 2:
        raise ValueError(f"compute_advantages: rloo needs group_size >= 2 (leave-one-out baseline), "
                         f"got {cfg.group_size}")
    return group_advantages(rewards, cfg.group_size, mode=cfg.advantage_mode, eps=cfg.adv_eps)
