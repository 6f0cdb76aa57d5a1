"""Outcome advantages from per-response rewards, grouped by prompt.

`rewards` is [B * G]: B prompts x G responses each, the G responses of a prompt contiguous. With
group statistics mean_g and std_g (unbiased, as torch.std) of a response's group:

    grpo                 A = (r - mean_g) / (std_g + eps)              DeepSeekMath eq. (GRPO outcome)
    dr_grpo              A = r - mean_g                                Dr. GRPO (no std division)
    rloo                 A = r - mean of the other G-1 = G/(G-1) (r - mean_g)   RLOO
    reinforce++          A = (r - mean_B) / (std_B + eps), over the whole batch    REINFORCE++
    reinforce++_baseline A = x / (std_B(x) + eps), x = r - mean_g     (group baseline, batch scale)

Degenerate groups are defined, not NaN: a group of one response, or a group whose rewards are all
equal, gives exactly 0 (it carries no preference signal; DAPO drops such groups instead). A batch
of one element, or an all-equal batch, gives 0 for the batch-normalised modes. The output is
float32 whatever the reward dtype. No gradient (rewards are data).
"""

from __future__ import annotations

from typing import Optional

import torch

from r1mega.kernels.dispatch import resolve_backend

__all__ = ["ADVANTAGE_MODES", "group_advantages", "group_advantages_reference"]

ADVANTAGE_MODES = ("grpo", "dr_grpo", "rloo", "reinforce++", "reinforce++_baseline")


def _validate(rewards: torch.Tensor, group_size: int, mode: str, eps: float) -> None:
    if mode not in ADVANTAGE_MODES:
        raise ValueError(f"group_advantages: unknown mode {mode!r}; expected one of {ADVANTAGE_MODES}")
    if rewards.dim() != 1:
        raise ValueError(f"group_advantages: rewards must be [B * G], got shape {tuple(rewards.shape)}")
    if not rewards.is_floating_point():
        raise ValueError(f"group_advantages: rewards must be floating point, got {rewards.dtype}")
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_advantages: group_size must be a positive int, got {group_size!r}")
    if rewards.numel() % group_size:
        raise ValueError(
            f"group_advantages: {rewards.numel()} rewards do not split into groups of {group_size}"
        )
    if not eps >= 0:
        raise ValueError(f"group_advantages: eps must be >= 0, got {eps}")
    if rewards.numel() and not bool(torch.isfinite(rewards).all()):
        raise ValueError("group_advantages: rewards contain NaN or inf")


def group_advantages(
    rewards: torch.Tensor, group_size: int, *, mode: str = "grpo", eps: float = 1e-6,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """[B * G] rewards -> [B * G] float32 advantages; see the module docstring for each mode."""
    _validate(rewards, group_size, mode, eps)
    if rewards.numel() == 0:
        return torch.zeros(0, dtype=torch.float32, device=rewards.device)
    if resolve_backend(backend, rewards, "group_advantages") == "triton":
        from r1mega.kernels.advantages_triton import group_advantages_triton

        return group_advantages_triton(rewards, group_size, mode=mode, eps=eps)
    return group_advantages_reference(rewards, group_size, mode=mode, eps=eps)


def _std(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Unbiased std; 0 for a single element (where torch.std would give NaN)."""
    if x.shape[dim] < 2:
        return torch.zeros_like(x.select(dim, 0))
    return x.std(dim=dim)


def group_advantages_reference(rewards: torch.Tensor, group_size: int, *, mode: str = "grpo", eps: float = 1e-6):
    """Torch implementation (float64 internally), same contract as `group_advantages`."""
    _validate(rewards, group_size, mode, eps)
    r = rewards.to(torch.float64).view(-1, group_size)  # [B, G]
    g = group_size
    mean = r.mean(dim=1, keepdim=True)
    flat_group = (r.amax(dim=1, keepdim=True) == r.amin(dim=1, keepdim=True))  # [B, 1] no signal
    centred = torch.where(flat_group, torch.zeros_like(r), r - mean)  # exact 0 for flat groups
    if mode == "grpo":
        adv = centred / (_std(r, 1).unsqueeze(1) + eps)
    elif mode == "dr_grpo":
        adv = centred
    elif mode == "rloo":
        adv = centred * (g / (g - 1)) if g > 1 else torch.zeros_like(r)
    elif mode == "reinforce++":
        flat = r.reshape(-1)
        if bool(flat.max() == flat.min()):
            adv = torch.zeros_like(r)
        else:
            adv = (r - flat.mean()) / (_std(flat, 0) + eps)
    else:  # reinforce++_baseline
        x = centred.reshape(-1)
        adv = centred / (_std(x, 0) + eps) if bool(x.abs().max() > 0) else torch.zeros_like(r)
    return adv.reshape(-1).to(torch.float32)
