import math

import torch

from harness.losses import batch_hard_triplet, pairwise_euclidean, reid_loss


def test_pairwise_euclidean_matches_cdist():
    x = torch.randn(9, 5, dtype=torch.float64)
    assert torch.allclose(pairwise_euclidean(x), torch.cdist(x, x), atol=1e-6)


def test_batch_hard_by_hand():
    # Points on a line: ids [0, 0, 1, 1] at [0, 1, 3, 7].
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # anchor 0: pos 1, neg min(3, 7) = 3 -> 1 - 3; anchor 1: 1 - 2; anchor 2: 4 - 2; anchor 3: 4 - 6.
    expected = sum(math.log1p(math.exp(v)) for v in (-2, -1, 2, -2)) / 4
    assert math.isclose(batch_hard_triplet(x, labels).item(), expected, rel_tol=1e-5)


def test_triplet_loss_drops_as_clusters_separate():
    labels = torch.arange(4).repeat_interleave(4)
    centres = torch.randn(4, 16)
    noise = torch.randn(16, 16)
    tight = batch_hard_triplet(centres[labels] * 5 + noise * 0.1, labels)
    loose = batch_hard_triplet(centres[labels] + noise, labels)
    assert tight < loose


def test_single_identity_batch_gives_zero_with_gradient():
    x = torch.randn(4, 3, requires_grad=True)
    loss = batch_hard_triplet(x, torch.zeros(4, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0 and x.grad is not None


def test_reid_loss_parts():
    feats, logits = torch.randn(8, 6), torch.randn(8, 3)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    total, parts = reid_loss(feats, logits, labels)
    assert math.isclose(total.item(), parts["triplet"] + parts["ce"], rel_tol=1e-6)
    assert 0 <= parts["id_acc"] <= 1
