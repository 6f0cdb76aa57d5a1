"""Reward-model losses and held-out metrics: pure torch, no megatron (tested against float64 formulas).

Scores: the scalar head's output at each sequence's last non-pad token. Losses, per unit:
- pair (chosen c, rejected r): Bradley-Terry, -log sigmoid(s_c - s_r);
- point (label y in {0, 1}): binary cross entropy on the logit s, -[y log sigmoid(s) + (1-y) log sigmoid(-s)].
A microbatch returns the (weighted) sum over its units and the unit count; the trainer divides the
gradients once by the unit count of the global batch (megatron's per-token loss path, with a unit
as the "token"), so the loss does not depend on how units fall into microbatches or DP ranks.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["last_token_scores", "unit_losses", "rm_loss", "auc"]


def last_token_scores(output: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B, S, 1] (or [B, S]) per-position scores -> [B], the score at position length - 1."""
    if output.dim() == 3:
        output = output[..., 0]
    return output[torch.arange(output.shape[0], device=output.device), lengths.to(output.device) - 1]


def unit_losses(scores: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pair losses [P], point losses [Q], pair margins s_c - s_r [P]), in float32."""
    s = scores.float()
    pairs = batch["pairs"].to(s.device)
    margins = s[pairs[:, 0]] - s[pairs[:, 1]]  # [P]
    pair_losses = -F.logsigmoid(margins)
    logits = s[batch["points"].to(s.device)]  # [Q]
    point_losses = F.binary_cross_entropy_with_logits(logits, batch["labels"].to(s.device), reduction="none")
    return pair_losses, point_losses, margins


def rm_loss(output: torch.Tensor, batch: dict, pointwise_weight: float = 1.0):
    """Megatron loss function: (summed unit loss, unit count, metrics). Metrics carry the sums and
    the raw point scores/labels (for the AUC of an evaluation)."""
    scores = last_token_scores(output, batch["lengths"])
    pair_losses, point_losses, margins = unit_losses(scores, batch)
    total = pair_losses.sum() + pointwise_weight * point_losses.sum()
    count = torch.tensor(pair_losses.numel() + point_losses.numel(), dtype=torch.int, device=total.device)
    metrics = {
        "loss_sum": total.detach(),
        "units": count.detach().float(),
        "pair_loss_sum": pair_losses.detach().sum(),
        "pairs": torch.tensor(float(margins.numel())),
        "pairs_correct": (margins.detach() > 0).float().sum(),
        "point_loss_sum": point_losses.detach().sum(),
        "points": torch.tensor(float(point_losses.numel())),
        "point_scores": scores.detach()[batch["points"].to(scores.device)].float().cpu(),
        "point_labels": batch["labels"].float().cpu(),
    }
    return total, count, metrics


def auc(scores: Sequence[float], labels: Sequence[float]) -> float:
    """Area under the ROC curve: P(score of a random positive > score of a random negative), ties
    counting half (the Mann-Whitney statistic). NaN when one class is absent."""
    s = torch.as_tensor(list(scores), dtype=torch.float64)
    y = torch.as_tensor(list(labels), dtype=torch.float64)
    pos, neg = s[y == 1], s[y == 0]
    if pos.numel() == 0 or neg.numel() == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).double().sum()
    ties = (pos[:, None] == neg[None, :]).double().sum()
    return float((greater + 0.5 * ties) / (pos.numel() * neg.numel()))
