"""Training losses: batch-hard triplet loss with soft margin, plus identity cross-entropy."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def pairwise_euclidean(features: torch.Tensor) -> torch.Tensor:
    """(B, D) features -> (B, B) Euclidean distances; clamped so the gradient at 0 is finite."""
    sq = features.pow(2).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2 * features @ features.T
    return d2.clamp_min(1e-12).sqrt()


def batch_hard_triplet(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over anchors of log(1 + exp(d(a, hardest positive) - d(a, hardest negative)))."""
    dist = pairwise_euclidean(features)
    same = labels[:, None] == labels[None, :]
    hardest_pos = dist.masked_fill(~same, float("-inf")).amax(1)
    hardest_neg = dist.masked_fill(same, float("inf")).amin(1)
    # Anchors with no negative in the batch (one identity) contribute nothing.
    valid = torch.isfinite(hardest_neg)
    return F.softplus(hardest_pos[valid] - hardest_neg[valid]).mean() if valid.any() else dist.sum() * 0


def reid_loss(features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
              triplet_weight: float = 1.0, id_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted triplet + cross-entropy loss on one batch, and its parts as floats for logging."""
    triplet = batch_hard_triplet(features.float(), labels)
    ce = F.cross_entropy(logits.float(), labels)
    total = triplet_weight * triplet + id_weight * ce
    acc = (logits.argmax(1) == labels).float().mean()
    return total, {"loss": total.item(), "triplet": triplet.item(), "ce": ce.item(), "id_acc": acc.item()}
