"""The re-ID loss: the authors' batch-hard soft-margin triplet, and the same numbers under DDP.

Distributed must equal single-process: 2 gloo processes, each holding half of a P x K batch,
must give the triplet term and the parameter gradients of one process holding all of it.
"""

from __future__ import annotations

import math

import pytest
import torch

from authors_reference import batch_hard_soft_triplet
from ddp_workers import Embedder, accumulation_worker, global_batch, loss_worker, spawn
from models.losses import batch_hard_triplet, pairwise_euclidean, reid_loss


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


@pytest.mark.parametrize("p, k", [(8, 4), (4, 2), (3, 1)])
def test_equals_the_authors_triplet_loss_and_gradient(p, k):
    # float64: rounding is ~1e-16 relative, far below the 1e-12 allowed.
    labels = torch.arange(p).repeat_interleave(k)
    x = (torch.randn(p * k, 16, dtype=torch.float64) + labels[:, None]).requires_grad_()
    ours = batch_hard_triplet(x, labels)
    (grad_ours,) = torch.autograd.grad(ours, x)
    theirs = batch_hard_soft_triplet(x, labels)
    (grad_theirs,) = torch.autograd.grad(theirs, x)
    assert abs(ours.item() - theirs.item()) <= 1e-12 * abs(theirs.item())
    assert (grad_ours - grad_theirs).abs().max() <= 1e-12 * grad_theirs.abs().max()


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
    assert math.isclose(total.item(), parts["triplet"].item() + parts["ce"].item(), rel_tol=1e-6)
    assert 0 <= parts["id_acc"].item() <= 1 and not parts["loss"].requires_grad


@pytest.mark.slow
@pytest.mark.parametrize("p", [4, 2])  # 2 identities per rank, and 1 (no negative on any rank)
def test_two_processes_give_the_single_process_loss_and_gradients(p, tmp_path):
    k = 3
    spawn(2, loss_worker, p, k, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    torch.manual_seed(0)
    model = Embedder(p)
    x, labels = global_batch(p, k)
    features, logits = model(x)
    loss, parts = reid_loss(features, logits, labels)
    loss.backward()
    expected = parts["triplet"].item()
    assert expected > 0.01
    for rank in ranks:
        # Tolerance: float32 sums over 5 features reorder across processes (~1e-7 relative).
        assert abs(rank["parts"]["triplet"].item() - expected) <= 1e-5 * expected
        for got, want in zip(rank["grads"], (q.grad for q in model.parameters())):
            assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    if p == 2:  # what mining on one rank's share would have given: no negatives, no triplet term
        assert all(rank["local_triplet"].item() == 0 for rank in ranks)


@pytest.mark.slow
def test_gradient_accumulation_all_reduces_once_per_update(tmp_path):
    spawn(2, accumulation_worker, tmp_path)
    for r in range(2):
        reductions = torch.load(tmp_path / f"rank{r}.pt")["reductions"]
        # 4 micro-steps, grad_accum 2: two updates, each one all-reduce of bucket 0 (the model is small).
        assert reductions.count(0) == 2
