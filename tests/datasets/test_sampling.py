from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from datasets.errors import DatasetError
from datasets.sampling import PKSampler, chunk_first, chunk_random, dense, evenly, frame_sampler


@pytest.mark.parametrize("num_frames", [8, 9, 20, 57])
def test_chunk_random_draws_one_frame_per_chunk_and_covers_every_chunk(num_frames: int):
    rng = np.random.default_rng(0)
    draws = np.stack([chunk_random(num_frames, 8, rng) for _ in range(400)])
    bounds = np.arange(9) * num_frames // 8
    assert ((draws >= bounds[:-1]) & (draws < bounds[1:])).all()
    assert set(draws.ravel()) == set(range(num_frames))
    assert (chunk_first(num_frames, 8) == bounds[:-1]).all()


def test_short_tracklets_repeat_their_last_frame():
    rng = np.random.default_rng(0)
    for sampler in (chunk_random, chunk_first, evenly):
        assert chunk_first(3, 5).tolist() == [0, 1, 2, 2, 2]
        assert sampler(3, 5, rng).tolist() == [0, 1, 2, 2, 2]
    assert dense(3, 5).tolist() == [[0, 1, 2, 2, 2]]


def test_evenly_and_dense():
    assert evenly(20, 4, stride=3).tolist() == [0, 3, 6, 9]
    assert evenly(8, 4, stride=3).tolist() == [0, 3, 6, 7]
    starts = {evenly(20, 4, np.random.default_rng(s), stride=3)[0] for s in range(50)}
    assert starts == set(range(11))  # random starts that keep the whole clip inside the tracklet
    clips = dense(10, 4)
    assert clips.shape == (3, 4) and clips.ravel()[:10].tolist() == list(range(10)) and clips[-1, -1] == 9
    assert frame_sampler("evenly", 2)(10, 3, None).tolist() == [0, 2, 4]
    with pytest.raises(DatasetError, match="unknown frame sampler 'random'"):
        frame_sampler("random")


LABELS = np.repeat(np.arange(10), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])  # identity i has i + 1 tracklets


def test_pk_batches_hold_p_identities_of_k_tracklets():
    sampler = PKSampler(LABELS, p=3, k=4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        counts = Counter(LABELS[batch].tolist())
        assert len(counts) == 3 and set(counts.values()) == {4}
        for label in counts:
            unique = len({i for i in batch if LABELS[i] == label})
            assert unique == min(4, label + 1)  # with replacement only when the identity has < K tracklets


def test_pk_plan_is_deterministic_per_seed_and_epoch():
    a, b = PKSampler(LABELS, 2, 2, seed=1), PKSampler(LABELS, 2, 2, seed=1)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    assert list(PKSampler(LABELS, 2, 2, seed=2)) != first


def test_distributed_ranks_get_distinct_identities_and_equal_steps():
    world = [PKSampler(LABELS, 2, 2, seed=3, num_replicas=3, rank=r) for r in range(3)]
    for s in world:
        s.set_epoch(5)
    plans = [list(s) for s in world]
    assert len({len(p) for p in plans}) == 1 and len(plans[0]) > 0
    for step in zip(*plans):
        labels = [set(LABELS[batch].tolist()) for batch in step]
        assert all(len(x) == 2 for x in labels)
        assert len(set.union(*labels)) == 6


def test_pk_sampler_rejects_too_few_identities():
    with pytest.raises(DatasetError, match="P x num_replicas = 4 x 3"):
        PKSampler(LABELS, 4, 2, num_replicas=3)
