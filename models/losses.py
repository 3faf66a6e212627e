"""Training losses: batch-hard soft-margin triplet on the global batch, plus identity cross-entropy.

The triplet term follows the STE-NVAN authors' util/loss.py (TripletLoss('soft', batch_hard=True),
dis_func='eu'): Euclidean distances sqrt(sum (a - b)^2 + 1e-12), hardest positive other than the
anchor, hardest negative, log(1 + exp(pos - neg)), mean over anchors. Under data parallelism it
mines over the P x K batch of all ranks (see `gather_rows`), never over one rank's share.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn import functional as F


class _GatherRows(torch.autograd.Function):
    """All-gather of equal-sized row blocks whose backward returns each rank's block of the summed gradient.

    Written here because torch.distributed.nn.functional.all_gather is deprecated and its gloo
    backward needs all_to_all; all_reduce works on every backend. Every rank computes the same
    loss of the gathered rows, so the summed gradient is world x dL/d(own rows), and DDP's
    averaging over ranks turns the parameter gradients into exactly those of one process.
    """

    @staticmethod
    def forward(ctx, rows: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.count = dist.get_rank(), rows.shape[0]
        blocks = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
        dist.all_gather(blocks, rows.contiguous())
        return torch.cat(blocks)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.count:(ctx.rank + 1) * ctx.count]


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Every rank's rows, rank by rank (differentiable); `rows` unchanged without a process group."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return rows
    return _GatherRows.apply(rows)


def pairwise_euclidean(features: torch.Tensor) -> torch.Tensor:
    """(B, D) features -> (B, B) Euclidean distances, sqrt(sum (a - b)^2 + 1e-12) as the authors compute them."""
    return (features.unsqueeze(1) - features.unsqueeze(0)).pow(2).sum(2).add(1e-12).sqrt()


def batch_hard_triplet(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over anchors of log(1 + exp(d(a, hardest positive) - d(a, hardest negative)))."""
    dist_ = pairwise_euclidean(features)
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    # Distances are >= 0, so the max over a zero-masked row is the hardest positive (0 if none).
    hardest_pos = (dist_ * positive).amax(1)
    hardest_neg = dist_.masked_fill(same, float("inf")).amin(1)
    # Anchors with no negative in the batch (one identity) contribute nothing.
    valid = torch.isfinite(hardest_neg)
    return F.softplus(hardest_pos[valid] - hardest_neg[valid]).mean() if valid.any() else dist_.sum() * 0


def reid_loss(features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, triplet_weight: float = 1.0,
              id_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted triplet (global batch) + cross-entropy (this rank's batch) and its parts as detached tensors.

    The parts stay on the device, so logging them costs no synchronisation until they are read.
    """
    triplet = batch_hard_triplet(gather_rows(features.float()), gather_rows(labels))
    ce = F.cross_entropy(logits.float(), labels)
    total = triplet_weight * triplet + id_weight * ce
    acc = (logits.argmax(1) == labels).float().mean()
    parts = {"loss": total, "triplet": triplet, "ce": ce, "id_acc": acc}
    return total, {k: v.detach() for k, v in parts.items()}
