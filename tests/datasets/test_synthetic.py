from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datasets.errors import DatasetError
from datasets.loaders import EvalClips
from datasets.prepare import prepare
from datasets.synthetic import write_mars

SMALL = dict(identities=4, cameras=2, tracklets_per_id=2, min_frames=2, max_frames=3, height=32, width=16)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_given_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # The two writes must match byte for byte even when the wall clock moves between them
    # (savemat stamps the time into every .mat header).
    monkeypatch.setattr("time.asctime", lambda *_: "Mon Jan  1 00:00:00 2001")
    write_mars(tmp_path / "a", seed=5, **SMALL)
    monkeypatch.setattr("time.asctime", lambda *_: "Tue Jan  2 00:00:01 2001")
    write_mars(tmp_path / "b", seed=5, **SMALL)
    write_mars(tmp_path / "c", seed=6, **SMALL)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert _files(tmp_path / "a") != _files(tmp_path / "c")


def test_identity_is_learnable_but_not_trivial(tmp_path: Path):
    """Cross-camera rank-1 of a raw pixel descriptor: far above chance, far below perfect."""
    # 40 test identities, 80 queries (chance 2.5 %); seeds 1-3 give 14-18 % rank-1.
    write_mars(tmp_path / "raw", identities=80, cameras=6, tracklets_per_id=4, min_frames=4, max_frames=8,
               height=64, width=32, distractors=0, junk=0, seed=1)
    prepare("mars", tmp_path / "raw", tmp_path / "prep", height=64, width=32)
    clips = EvalClips(tmp_path / "prep", 4)
    # Mean clip pooled to 16 x 8 cells: colour layout, no learning.
    features = np.stack([clips[i][0].numpy().astype(np.float32).mean(0).reshape(3, 16, 4, 8, 4).mean((2, 4)).ravel()
                         for i in range(len(clips))])
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    pids, cameras = clips.pids, clips.cameras
    queries = np.flatnonzero(clips.rows["is_query"].to_numpy())
    hits = []
    for q in queries:
        gallery = np.flatnonzero((pids != pids[q]) | (cameras != cameras[q]))
        best = gallery[np.argmin(((features[gallery] - features[q]) ** 2).sum(1))]
        hits.append(pids[best] == pids[q])
    chance = 1 / len(np.unique(pids))
    assert 4 * chance < np.mean(hits) < 0.8


def test_bad_sizes_are_rejected(tmp_path: Path):
    with pytest.raises(DatasetError, match="--min-frames <= --max-frames"):
        write_mars(tmp_path / "x", **{**SMALL, "min_frames": 5, "max_frames": 4})
    assert not (tmp_path / "x").exists()
    assert list(tmp_path.iterdir()) == []


def test_worker_processes_write_the_same_bytes_and_test_identities_size_the_split(tmp_path: Path):
    # The embedded default's test split has many more identities than its training split.
    write_mars(tmp_path / "one", seed=2, test_identities=3, **SMALL)
    table = write_mars(tmp_path / "two", seed=2, test_identities=3, workers=2, **SMALL)
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
    pids = {split: set(table.filter(table["split"] == split)["pid"].to_list()) - {0, -1} for split in ("train", "test")}
    assert (len(pids["train"]), len(pids["test"])) == (1, 3)
    with pytest.raises(DatasetError, match="--test-identities 4"):
        write_mars(tmp_path / "x", test_identities=4, **SMALL)
