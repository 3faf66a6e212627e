from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from datasets.errors import DatasetError
from datasets.loaders import (IMAGENET_MEAN, IMAGENET_STD, EvalClips, TrainClips, eval_loader, normalize, set_epoch,
                              train_loader)
from datasets.store import FrameStore


def test_normalize_matches_imagenet_formula():
    clips = torch.randint(0, 256, (2, 4, 3, 8, 4), dtype=torch.uint8)
    want = (clips.float() / 255 - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    got = normalize(clips)
    assert got.dtype == torch.float32 and torch.allclose(got, want, atol=1e-5)


def test_train_clips_come_from_their_tracklet_with_whole_clip_flips(mars_prepared: Path):
    rows = pl.read_parquet(mars_prepared / "tracklets.parquet").filter(pl.col("split") == "train")
    store = FrameStore(mars_prepared)
    plain = TrainClips(mars_prepared, frames=4, flip=False, seed=3)
    flipped = TrainClips(mars_prepared, frames=4, flip=True, seed=3)
    assert plain.num_classes == rows["pid"].n_unique() and len(plain) == rows.height
    flips = 0
    for i in range(len(plain)):
        clip, label, camera = plain[i, 0, i]
        assert clip.shape == (4, 3, 64, 32) and clip.dtype == torch.uint8
        assert plain.pids[label] == rows["pid"][i] and camera == rows["camera"][i]
        frames = store.read(rows["frame_offset"][i] + np.arange(rows["num_frames"][i]))
        assert all(any(np.array_equal(f, g) for g in frames) for f in clip.numpy())
        other = flipped[i, 0, i][0]
        flips += not torch.equal(other, clip)
        assert torch.equal(other, clip) or torch.equal(other, clip.flip(-1))
    assert 0 < flips < len(plain)


def test_train_clips_are_deterministic_per_seed_and_epoch(mars_prepared: Path):
    a, b = TrainClips(mars_prepared, 4, seed=1), TrainClips(mars_prepared, 4, seed=1)
    long = int(np.argmax(a.lengths))
    assert torch.equal(a[long, 0, 0][0], b[long, 0, 0][0])
    draws = set()
    for epoch in range(6):
        draws.add(a[long, epoch, 0][0].numpy().tobytes())
    assert len(draws) > 1


def test_every_draw_of_a_tracklet_gets_its_own_frames_and_flip(mars_prepared: Path):
    # An identity with fewer tracklets than K draws one tracklet several times in a step.
    data = TrainClips(mars_prepared, 4, seed=2)
    long = int(np.argmax(data.lengths))
    clips = {data[long, 0, draw][0].numpy().tobytes() for draw in range(12)}
    assert len(clips) > 1
    assert torch.equal(data[long, 0, 5][0], data[long, 0, 5][0])


def test_persistent_loader_workers_draw_each_epoch_as_one_process(mars_prepared: Path):
    # Persistent workers keep their own dataset copy: the epoch must reach them with each item.
    dataset = TrainClips(mars_prepared, 4, seed=3)
    inline, workers = train_loader(dataset, p=2, k=2), train_loader(dataset, p=2, k=2, num_workers=2)
    assert workers.persistent_workers
    for epoch in range(3):
        set_epoch(inline, epoch)
        set_epoch(workers, epoch)
        for (a, la, _), (b, lb, _) in zip(inline, workers, strict=True):
            assert torch.equal(a, b) and torch.equal(la, lb)


def test_train_loader_batches_p_identities(duke_prepared: Path):
    dataset = TrainClips(duke_prepared, 3, seed=0)
    loader = train_loader(dataset, p=2, k=2)
    set_epoch(loader, 1)
    clips, labels, cameras = next(iter(loader))
    assert clips.shape == (4, 3, 3, 64, 32) and clips.dtype == torch.uint8
    assert len(set(labels.tolist())) == 2 and cameras.shape == (4,)


def test_eval_clips_follow_the_split_rows(mars_prepared: Path):
    rows = pl.read_parquet(mars_prepared / "tracklets.parquet").filter(pl.col("split") == "test")
    store = FrameStore(mars_prepared)
    first = EvalClips(mars_prepared, 4)
    all_frames = EvalClips(mars_prepared, 4, sampler="dense")
    for i in range(rows.height):
        clip, pid, camera, index = first[i]
        n, offset = rows["num_frames"][i], rows["frame_offset"][i]
        assert (pid, camera, index) == (rows["pid"][i], rows["camera"][i], i)
        interval = -(-n // 4)  # the authors' chunks: ceil(F / S) frames each, padded with the last
        chunks = np.minimum(np.arange(4) * interval, n - 1)
        assert np.array_equal(clip.numpy(), store.read(offset + chunks))
        clips = all_frames[i][0]
        assert clips.shape == (-(-n // 4), 4, 3, 64, 32)
        assert np.array_equal(clips.reshape(-1, 3, 64, 32)[:n].numpy(), store.read(offset + np.arange(n)))
    batch = next(iter(eval_loader(first, batch_size=5)))
    assert batch[0].shape == (5, 4, 3, 64, 32) and batch[3].tolist() == list(range(5))
    with pytest.raises(DatasetError, match="batch_size 1"):
        eval_loader(all_frames, batch_size=2)


def test_missing_prepared_dataset_is_named(tmp_path: Path):
    with pytest.raises(DatasetError, match=f"{tmp_path / 'tracklets.parquet'} does not exist"):
        TrainClips(tmp_path, 4)
    with pytest.raises(DatasetError, match="'dense' cannot be used for training"):
        TrainClips(tmp_path, 4, sampler="dense")
