"""Feature extraction and scoring: saved features re-score exactly; bad checkpoints are refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.loaders import EvalClips, TrainClips, train_loader
from harness.checkpoint import load_model, save_state
from harness.evaluate.metrics import scores_from_outcomes
from harness.evaluate.queries import outcomes_of, read_queries
from harness.evaluate.features import extract_features, load_features, save_features, score_features
from harness.train.worker import build_optimizer, train_epoch

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def trained(prepared_root, tmp_path_factory):
    """A checkpoint of a tiny NVAN trained for a few steps, and its config."""
    from harness.params import load_config

    config = load_config(ROOT / "params.yaml", [
        f"data.prepared_root={prepared_root}", "data.frames=4", "data.height=64", "data.width=32",
        "model.preset=nvan", "model.width=4", "model.stripes=null", "train.batch_size=8", "train.k=2",
        "train.steps_per_epoch=3", "train.lr=1e-3"])
    torch.manual_seed(0)
    data = TrainClips(prepared_root / "mars", 4, seed=0)
    spec = config.spec(data.num_classes)
    from models.video_reid import build_model

    model = build_model(spec)
    optimizer = build_optimizer(model, config.train)
    train_epoch(model, train_loader(data, config.train.p, config.train.k), optimizer, config.train, torch.device("cpu"))
    folder = tmp_path_factory.mktemp("ckpt")
    save_state(folder, model, spec)
    return folder, config


def test_saved_features_rescore_identically(trained, prepared_root, tmp_path):
    folder, config = trained
    model, _ = load_model(folder)
    dataset = EvalClips(prepared_root / "mars", 4)
    features = extract_features(model, dataset, batch_size=5, progress=False)
    assert features.shape == (len(dataset), model.spec.feature_dim)
    direct = score_features(features, dataset.rows, ["mars-official", "standard"])
    save_features(tmp_path / "f", features, dataset.rows)
    again_features, rows = load_features(tmp_path / "f")
    again = score_features(again_features, rows, ["mars-official", "standard"])
    for name in direct:
        assert direct[name].as_dict() == again[name].as_dict()
    # Batch size does not change the features.
    assert np.allclose(extract_features(model, dataset, batch_size=1, progress=False), features, atol=1e-5)


def test_dense_clips_are_batched_across_tracklets_and_averaged_per_tracklet(trained, prepared_root):
    """Dense features from batches of 5 clips (tracklets split over batches) are each tracklet's mean clip feature."""
    from datasets.loaders import dense_loader, normalize
    from models.fuse import inference_model

    folder, _ = trained
    model, _ = load_model(folder)
    dense = EvalClips(prepared_root / "mars", 4, sampler="dense")
    counts = dense.clips_per_tracklet()
    batches = [index.tolist() for *_, index in dense_loader(dense, 5)]
    assert [len(b) for b in batches[:-1]] == [5] * (len(batches) - 1) and sum(map(len, batches)) == counts.sum()
    assert any(b[-1] == c[0] for b, c in zip(batches, batches[1:]))  # a tracklet split over two batches
    features = extract_features(model, dense, batch_size=5, num_workers=1, progress=False)
    # The rule before clip batching, transcribed: one forward per tracklet of all its clips, then their mean.
    folded = inference_model(model)
    with torch.inference_mode():
        expected = np.stack([folded(normalize(dense[i][0])).mean(0).numpy() for i in range(len(dense))])
    assert features.dtype == np.float32 and features.shape == expected.shape
    assert np.abs(features - expected).max() <= 1e-5 * np.abs(expected).max()


def test_bf16_autocast_features_are_close_to_fp32(trained, prepared_root):
    """amp='bf16' runs the model under autocast (features differ) and returns float32 features near fp32's.

    Measured on this model: largest error 0.5-0.7% of the largest feature, lowest cosine to fp32 1 - 6.5e-4.
    """
    folder, _ = trained
    model, _ = load_model(folder)
    dataset = EvalClips(prepared_root / "mars", 4, sampler="dense")
    fp32 = extract_features(model, dataset, batch_size=5, progress=False)
    bf16 = extract_features(model, dataset, batch_size=5, progress=False, amp="bf16")
    assert bf16.dtype == np.float32 and not np.array_equal(bf16, fp32)
    error = np.abs(bf16 - fp32).max() / np.abs(fp32).max()
    cosine = (bf16 * fp32).sum(1) / np.linalg.norm(bf16, axis=1) / np.linalg.norm(fp32, axis=1)
    assert error <= 0.03 and cosine.min() >= 0.998


def test_evaluation_runs_the_model_the_cost_table_times(trained, prepared_root):
    """Features come from the BN-folded inference model (what harness.cost times), bit for bit."""
    from datasets.loaders import eval_loader, normalize
    from models.fuse import inference_model

    folder, _ = trained
    model, _ = load_model(folder)
    dataset = EvalClips(prepared_root / "mars", 4)
    features = extract_features(model, dataset, batch_size=5, progress=False)
    folded, rows = inference_model(model), []
    with torch.inference_mode():
        for clips, *_ in eval_loader(dataset, 5):
            rows.append(folded(normalize(clips)))
            plain = model.eval()(normalize(clips))
    assert np.array_equal(features, torch.cat(rows).numpy())
    # The unfolded model rounds differently: equality above is not an accident of folding doing nothing.
    assert not np.array_equal(features[-len(plain):], plain.numpy())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the caller's model is untouched


@pytest.mark.slow(seconds=30)
def test_compiled_evaluation_matches_eager(trained, prepared_root):
    """eval.compile changes speed, not features (1e-5 of their scale)."""
    folder, _ = trained
    model, _ = load_model(folder)
    dataset = EvalClips(prepared_root / "mars", 4)
    eager = extract_features(model, dataset, batch_size=5, progress=False)
    compiled = extract_features(model, dataset, batch_size=5, progress=False, compile=True)
    assert np.abs(compiled - eager).max() <= 1e-5 * np.abs(eager).max()


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.evaluate", *args], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.slow
def test_cli_round_trip_and_errors(trained, prepared_root, tmp_path):
    folder, _ = trained
    sets = ["--set", f"data.prepared_root={prepared_root}", "--set", "data.frames=4", "--set", "data.height=64",
            "--set", "data.width=32", "--set", "model.preset=nvan", "--set", "model.width=4", "--set", "model.stripes=null"]
    first = cli("--checkpoint", str(folder), "--save-features", str(tmp_path / "f"), "--out", str(tmp_path / "a.json"),
                "--queries", str(tmp_path / "a.queries.parquet"), *sets)
    assert first.returncode == 0, first.stderr
    # The per-query outcomes give back every reported score, and the JSON carries their intervals.
    scores = json.loads((tmp_path / "a.json").read_text())["mars-official"]
    outcomes = outcomes_of(read_queries(tmp_path / "a.queries.parquet"), "mars-official")
    assert scores_from_outcomes("mars-official", outcomes).as_dict() == {k: scores[k] for k in scores_from_outcomes(
        "mars-official", outcomes).as_dict()}
    assert scores["ci95"]["rank1"][0] <= scores["rank1"] <= scores["ci95"]["rank1"][1]
    assert "95 % interval over queries: rank-1 [" in first.stdout
    second = cli("--features", str(tmp_path / "f"), "--out", str(tmp_path / "b.json"), *sets)
    assert second.returncode == 0, second.stderr
    assert json.loads((tmp_path / "a.json").read_text()) == json.loads((tmp_path / "b.json").read_text())
    assert "mars-official" in first.stdout and "mAP" in first.stdout
    wrong = cli("--checkpoint", str(folder), "--preset", "baseline", *sets)
    assert wrong.returncode == 2 and "not preset 'baseline'" in wrong.stderr and "Traceback" not in wrong.stderr
    missing = cli("--checkpoint", str(tmp_path / "nope"), *sets)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    protocol = cli("--features", str(tmp_path / "f"), *sets, "--set", "eval.protocols=[market]")
    assert protocol.returncode == 2 and "eval.protocols" in protocol.stderr


@pytest.mark.slow
def test_cli_preset_applies_before_validation(prepared_root, tmp_path):
    # The default preset (ste_nvan) cannot run 16 stripes at 64 pixels, but --preset baseline asks
    # for the baseline: the config must be validated for that preset.
    from authors_reference import AuthorsCNN

    torch.manual_seed(0)
    torch.save({f"module.{k}": v for k, v in AuthorsCNN("baseline", 16, width=4).state_dict().items()},
               tmp_path / "R50_baseline_mean.pth")
    sets = ["--set", f"data.prepared_root={prepared_root}", "--set", "data.frames=4", "--set", "data.height=64",
            "--set", "data.width=32", "--set", "presets.ste_nvan.stripes=[16,16,16,16]"]
    done = cli("--official", str(tmp_path / "R50_baseline_mean.pth"), "--preset", "baseline", *sets)
    assert done.returncode == 0, done.stderr
    assert "mars-official" in done.stdout


def test_cli_refuses_a_store_of_another_frame_size(trained, prepared_root):
    folder, _ = trained
    sets = ["--set", f"data.prepared_root={prepared_root}", "--set", "data.frames=4", "--set", "data.height=128",
            "--set", "data.width=64", "--set", "model.preset=nvan", "--set", "model.width=4"]
    done = cli("--checkpoint", str(folder), *sets)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "64 x 32 pixels" in done.stderr and "128 x 64" in done.stderr and "datasets.prepare" in done.stderr
