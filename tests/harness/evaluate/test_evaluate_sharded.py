"""Feature extraction sharded over 2 gloo processes gives the one-process features, shards unequal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.loaders import EvalClips
from datasets.prepare import prepare
from datasets.synthetic import write_mars
from ddp_workers import spawn
from eval_workers import SAMPLERS, evaluate_worker, shard_worker, tiny_model
from harness.evaluate.features import extract_features, shard_bounds


@pytest.fixture(scope="module")
def odd_test_set(tmp_path_factory) -> Path:
    """A prepared MARS-like set of 19 test tracklets (42 dense 4-frame clips): no even split by rows or clips."""
    root = tmp_path_factory.mktemp("odd")
    write_mars(root / "raw", identities=8, cameras=3, tracklets_per_id=4, min_frames=4, max_frames=10,
               height=64, width=32, distractors=2, junk=1, seed=3)
    prepare("mars", root / "raw", root / "mars", height=64, width=32)
    return root / "mars"


@pytest.mark.slow(seconds=10)
def test_two_ranks_give_the_one_process_features(odd_test_set, tmp_path):
    torch.manual_seed(0)
    model = tiny_model()
    torch.save(model.state_dict(), tmp_path / "state.pt")
    batch_size = 3  # several batches per shard, the last one short
    expected = {}
    for sampler in SAMPLERS:
        dataset = EvalClips(odd_test_set, 4, sampler)
        sizes = np.diff(shard_bounds(dataset.clips_per_tracklet(), 2))
        assert sizes.sum() == len(dataset) and sizes[0] != sizes[1]  # rank 1's rows travel padded
        expected[sampler] = extract_features(model, dataset, batch_size, progress=False)
    spawn(2, shard_worker, odd_test_set, tmp_path / "state.pt", batch_size, tmp_path)
    for rank in range(2):
        got = np.load(tmp_path / f"rank{rank}.npz")
        for sampler in SAMPLERS:
            assert got[sampler].dtype == np.float32 and got[sampler].shape == expected[sampler].shape
            np.testing.assert_allclose(got[sampler], expected[sampler], rtol=1e-5, atol=1e-5)


@pytest.mark.slow(seconds=10)
def test_training_evaluation_on_two_ranks_scores_rank_zeros_model(odd_test_set, tmp_path):
    # Rank 1's BN statistics differ (as after DDP training without SyncBN): both ranks must extract
    # with rank 0's, so the scores equal one process evaluating rank 0's model.
    from harness.params import load_config
    from harness.train.selection import evaluate_model

    sampler = "dense"
    overrides = [f"data.prepared_root={odd_test_set.parent}", "data.dataset=mars", "data.frames=4",
                 "data.height=64", "data.width=32", "model.preset=nvan", "model.width=4", "model.stripes=null",
                 f"eval.sampler={sampler}", "eval.batch_size=3"]
    torch.manual_seed(0)
    model = tiny_model()
    torch.save(model.state_dict(), tmp_path / "state.pt")
    config = load_config(Path(__file__).resolve().parents[3] / "params.yaml", overrides)
    expected, *_ = evaluate_model(model, EvalClips(odd_test_set, 4, sampler), config.eval, torch.device("cpu"),
                                  amp=config.train.amp)
    spawn(2, evaluate_worker, overrides, tmp_path / "state.pt", tmp_path)
    got = json.loads((tmp_path / "metrics.json").read_text())
    assert got.keys() == expected.keys()
    assert all(got[k] == pytest.approx(v, abs=1e-6) for k, v in expected.items())


def test_shards_are_contiguous_and_balanced_by_cost():
    costs = np.array([1, 5, 1, 1, 1, 1, 2])  # 12 clips: 6 a rank, to within one tracklet
    assert shard_bounds(costs, 1).tolist() == [0, 7]
    assert shard_bounds(costs, 2).tolist() == [0, 2, 7]
    assert shard_bounds(np.ones(5, int), 2).tolist() == [0, 3, 5]
    assert shard_bounds(np.ones(2, int), 3).tolist() == [0, 1, 2, 2]  # more ranks than rows: an empty shard
