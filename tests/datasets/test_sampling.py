from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from datasets.errors import DatasetError
from datasets.sampling import (PKSampler, chunk_first, chunk_random, dense, evenly, frame_sampler, segment_first,
                               segment_random)


def authors_chunks(num_frames: int, frames: int) -> list[list[int]]:
    """A transcription of the STE-NVAN authors' chunk rule (util/utils.py, Video_train_Dataset and
    Video_test_Dataset): the clip's S chunks of frame indices, padding copies included."""
    if num_frames < frames:
        strip = list(range(num_frames)) + [num_frames - 1] * (frames - num_frames)
        return [strip[s:s + 1] for s in range(frames)]
    interval = math.ceil(num_frames / frames)
    strip = list(range(num_frames)) + [num_frames - 1] * (interval * frames - num_frames)
    return [strip[s * interval:(s + 1) * interval] for s in range(frames)]


@pytest.mark.parametrize("frames", [4, 6, 8, 16])
def test_chunk_first_is_the_authors_test_clip_for_every_length(frames: int):
    for num_frames in range(1, 1001):
        expected = [chunk[0] for chunk in authors_chunks(num_frames, frames)]  # their clips[:, 0]
        assert chunk_first(num_frames, frames).tolist() == expected, num_frames


@pytest.mark.parametrize("frames", [4, 6, 8, 16])
def test_chunk_random_draws_a_member_of_each_authors_chunk_for_every_length(frames: int):
    rng = np.random.default_rng(0)
    for num_frames in range(1, 1001):
        chunks = authors_chunks(num_frames, frames)
        draws = np.stack([chunk_random(num_frames, frames, rng) for _ in range(8)])
        for s, chunk in enumerate(chunks):
            assert set(draws[:, s].tolist()) <= set(chunk), (num_frames, s)


@pytest.mark.parametrize("num_frames", [9, 20, 57])
def test_chunk_random_is_uniform_over_chunk_positions_padding_included(num_frames: int):
    # The authors draw a position in each chunk uniformly (np.random.choice(interval)), so a
    # padding copy of the last frame is as likely as any real frame of the chunk.
    rng = np.random.default_rng(1)
    draws = np.stack([chunk_random(num_frames, 8, rng) for _ in range(4000)])
    for s, chunk in enumerate(authors_chunks(num_frames, 8)):
        expected = Counter(chunk)
        seen = Counter(draws[:, s].tolist())
        assert set(seen) == set(expected)
        for frame, copies in expected.items():
            share = copies / len(chunk)
            # 4000 draws: the standard error of a share is at most 0.008; 5 of them bound the gap.
            assert abs(seen[frame] / len(draws) - share) < 0.04, (s, frame)


def test_the_issue_examples():
    assert chunk_first(20, 8).tolist() == [0, 3, 6, 9, 12, 15, 18, 19]
    assert chunk_first(9, 8).tolist() == [0, 2, 4, 6, 8, 8, 8, 8]
    assert segment_first(20, 8).tolist() == [0, 2, 5, 7, 10, 12, 15, 17]  # the near-equal segments


@pytest.mark.parametrize("num_frames", [8, 9, 20, 57])
def test_segment_random_draws_one_frame_per_segment_and_covers_every_frame(num_frames: int):
    rng = np.random.default_rng(0)
    draws = np.stack([segment_random(num_frames, 8, rng) for _ in range(400)])
    bounds = np.arange(9) * num_frames // 8
    assert ((draws >= bounds[:-1]) & (draws < bounds[1:])).all()
    assert set(draws.ravel()) == set(range(num_frames))
    assert (segment_first(num_frames, 8) == bounds[:-1]).all()


def test_short_tracklets_repeat_their_last_frame():
    rng = np.random.default_rng(0)
    for sampler in (chunk_random, chunk_first, segment_random, segment_first, evenly):
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


def mars_sized_labels() -> np.ndarray:
    """625 identities (MARS's training split) with 1 to 60 tracklets each, about 13 on average as in MARS."""
    counts = np.clip(np.random.default_rng(5).geometric(1 / 13, 625), 1, 60)
    return np.repeat(np.arange(625), counts)


def tracklets(batch) -> list[int]:
    return [t for t, _, _ in batch]


def test_identity_epoch_is_one_pass_over_the_identities():
    labels = mars_sized_labels()
    sampler = PKSampler(labels, p=8, k=4, seed=0)
    assert len(sampler) == 625 // 8 == 78
    seen = []
    for batch in sampler:
        counts = Counter(labels[tracklets(batch)].tolist())
        assert len(counts) == 8 and set(counts.values()) == {4}
        seen += list(counts)
    assert len(seen) == len(set(seen)) == 78 * 8  # each identity at most once; the remainder dropped
    draws = [d for batch in sampler for _, _, d in batch]
    assert draws == list(range(78 * 32))  # every draw numbered once


def test_identity_epoch_draws_tracklets_with_replacement():
    # The authors: np.random.choice(tracklets of the identity, K), with replacement, even when
    # the identity has K or more tracklets.
    sampler = PKSampler(LABELS, p=2, k=4, seed=0)
    repeats = 0
    for epoch in range(30):
        sampler.set_epoch(epoch)
        for batch in sampler:
            for label, group in zip(*np.unique(LABELS[tracklets(batch)], return_index=True)):
                members = tracklets(batch)[group:group + 4]
                assert LABELS[members].tolist() == [label] * 4
                repeats += len(set(members)) < 4 and label >= 3
    assert repeats > 0


def test_tracklet_epoch_groups_k_tracklets():
    sampler = PKSampler(LABELS, p=3, k=4, seed=0, mode="tracklets")
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        counts = Counter(LABELS[tracklets(batch)].tolist())
        assert len(counts) == 3 and set(counts.values()) == {4}
        for label in counts:
            unique = len({i for i in tracklets(batch) if LABELS[i] == label})
            assert unique == min(4, label + 1)  # with replacement only when the identity has < K tracklets


@pytest.mark.parametrize("mode", ["identities", "tracklets"])
def test_pk_plan_is_deterministic_per_seed_and_epoch(mode):
    a, b = PKSampler(LABELS, 2, 2, seed=1, mode=mode), PKSampler(LABELS, 2, 2, seed=1, mode=mode)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    assert list(PKSampler(LABELS, 2, 2, seed=2, mode=mode)) != first


@pytest.mark.parametrize("mode", ["identities", "tracklets"])
@pytest.mark.parametrize("world", [2, 4])
def test_ranks_together_draw_exactly_the_single_process_batch(mode, world):
    single = PKSampler(LABELS, 4, 2, seed=3, mode=mode)
    ranks = [PKSampler(LABELS, 4, 2, seed=3, num_replicas=world, rank=r, mode=mode) for r in range(world)]
    for s in (single, *ranks):
        s.set_epoch(5)
    plans = [list(s) for s in ranks]
    assert all(len(p) == len(single) > 0 for p in plans)
    for step, whole in zip(zip(*plans), single):
        assert [item for part in step for item in part] == whole  # rank blocks in rank order
        labels = [set(LABELS[tracklets(part)].tolist()) for part in step]
        assert all(len(x) == 4 // world for x in labels) and len(set.union(*labels)) == 4


def test_pk_sampler_rejects_bad_sizes():
    with pytest.raises(DatasetError, match="at least P = 12 identities"):
        PKSampler(LABELS, 12, 2)
    with pytest.raises(DatasetError, match="divisible by num_replicas"):
        PKSampler(LABELS, 4, 2, num_replicas=3)
    with pytest.raises(DatasetError, match="mode 'epochs' is unknown"):
        PKSampler(LABELS, 4, 2, mode="epochs")
