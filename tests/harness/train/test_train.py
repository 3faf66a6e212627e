"""The training job on a real local Ray cluster and a real sqlite MLflow store."""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest
import ray
import ray.train
from mlflow import MlflowClient

from torch import nn

from harness.checkpoint import read_state
from harness.errors import UserError
from harness.config import EvalConfig
from harness.measure.hardware import cpu_name
from harness.results.tracking import connect, find_run, log_metrics, start_run
from harness import storage
from harness.results.records import RunRecord, read_record
from harness.train.driver import fit
from harness.train.run_dir import log_missing_epochs, saved_epochs
from harness.cluster import ray_session
from harness.train.selection import NOT_EVALUATED, Best, checkpoint_score, choose
from harness.train.worker import training_model
from harness.versions import PACKAGES
from models.presets import preset_spec

ROOT = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    with ray_session(None, num_cpus=2):
        yield


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.mark.slow(seconds=70)
def test_train_and_resume_on_object_storage_with_sparse_checkpoints(local_ray, tiny_config, s3_storage, tmp_path,
                                                                    monkeypatch):
    # ray.storage_path is an S3 URI (a local moto server): checkpoints, resume and the run record
    # go through it, and no local folder named after the URI appears.
    monkeypatch.chdir(tmp_path)
    config = tiny_config("train.epochs=4", "eval.every=3", "train.checkpoint_every=2", "train.steps_per_epoch=2",
                         "train.step_size=1", "train.gamma=0.5", "ray.max_failures=0", f"ray.storage_path={s3_storage}")
    with pytest.raises(ray.train.TrainingFailedError, match="injected failure"):
        fit(config, name="early", progress=False, fail_at_step=8)  # in epoch 3, after epoch 2's evaluation
    client = MlflowClient(config.mlflow.tracking_uri)
    first = find_run(client, client.get_experiment_by_name("nvan-bench").experiment_id, "nvan.ray_run", "early")
    assert client.get_run(first).data.tags["nvan.status"] == "failed"
    # Epoch 0 was neither evaluated nor at the interval: no full checkpoint; epoch 1 was at the interval, 2 evaluated.
    assert sorted(saved_epochs(storage.join(s3_storage, "early"))) == [1, 2]
    record = tmp_path / "early.json"
    result = fit(config, resume="early", progress=False, record_to=record)
    assert result.run_id == first  # the same MLflow run continues, epochs 0 to 2 logged once
    assert [s for s, _ in history(client, result.run_id, "loss")] == [0, 1, 2, 3]
    # eval.select last: the trained model's scores, though epoch 2's evaluation is in the checkpoint resumed from.
    assert client.get_run(result.run_id).data.tags["nvan.status"] == "finished" and result.best_epoch == 3
    assert sorted(saved_epochs(storage.join(s3_storage, "early"))) == [2, 3]  # the newest kept (eval.select last)
    resumed = read_record(record)
    check_history_and_hardware(resumed, client, result.run_id)
    assert resumed.run.checkpoint.startswith("early/checkpoint_")
    # Float32 is float32 unless train.tf32: the workers' settings are in the record and in MLflow.
    assert resumed.run.precision == {"cudnn_allow_tf32": False, "cuda_matmul_allow_tf32": False,
                                     "float32_matmul_precision": "highest"}
    assert client.get_run(result.run_id).data.tags["precision.cudnn_allow_tf32"] == "False"
    # The versions it ran with, as installed, in the record and as the MLflow run's software.* tags.
    installed = {name: version(name) for name in PACKAGES} | {"python": platform.python_version()}
    assert resumed.run.software == installed
    tags = client.get_run(result.run_id).data.tags
    assert {k.removeprefix("software."): v for k, v in tags.items() if k.startswith("software.")} == installed
    # Where MLflow's UI looks: the runs table first, the command and commit in the source column; params that decide
    # the run only (not sweep.*, report.* or another preset's block).
    experiment = client.get_experiment(client.get_run(result.run_id).info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert tags["mlflow.source.name"] == "python -m harness.train"
    assert re.fullmatch(r"[0-9a-f]{40}", tags["mlflow.source.git.commit"])
    params = client.get_run(result.run_id).data.params
    assert not [k for k in params if k.split(".")[0] in ("sweep", "report", "mlflow", "synthetic")]
    assert [k for k in params if k.startswith("presets.")] == [k for k in params if k.startswith("presets.nvan")]
    assert params["train.lr"] == str(config.train.lr) and params["model.preset"] == "nvan" and len(params) < 100
    assert result.checkpoint == storage.join(s3_storage, resumed.run.checkpoint)
    assert read_state(storage.download(result.checkpoint, tmp_path / "best"))["epoch"] == 3
    assert not list(tmp_path.glob("s3*"))  # nothing written to a local folder named after the URI
    with pytest.raises(UserError, match="already trained all 4 epochs"):
        fit(config, resume="early", progress=False)
    # The URI's credentials (testing:testing@) reach neither MLflow nor the record; the bucket does.
    run = client.get_run(result.run_id)
    recorded = [*run.data.params.values(), *run.data.tags.values(), record.read_text()]
    assert not [text for text in recorded if "testing:testing" in text]
    assert "ray.storage_path" not in run.data.params  # where checkpoints go does not decide the run


def check_history_and_hardware(recorded: RunRecord, client: MlflowClient, run_id: str) -> None:
    """The record of the resumed 4-epoch run: every epoch, those before the failure from the checkpoint, with its loss
    (as MLflow has it), the lr of the step schedule, and rank-1 and mAP where it was evaluated (epochs 3 and 4); the
    scores are the last epoch's (eval.select last); the hardware of rank 0's worker: this machine's CPU, no GPU."""
    assert [e.epoch for e in recorded.history] == [1, 2, 3, 4]
    assert [e.loss for e in recorded.history] == [v for _, v in history(client, run_id, "loss")]
    assert [e.lr for e in recorded.history] == pytest.approx([1e-3, 5e-4, 2.5e-4, 1.25e-4], rel=1e-12)
    evaluated = [sorted(e.model_fields_set & {"rank1", "map"}) for e in recorded.history]
    assert evaluated == [[], [], ["map", "rank1"], ["map", "rank1"]]
    last, scores = recorded.history[-1], recorded.scores["mars-official"]
    assert recorded.selection == "last" and recorded.best_epoch == 3
    assert (scores.rank1, scores.map) == (last.rank1, last.map)
    assert (recorded.run.worker_cpu, recorded.run.gpu) == (cpu_name(), None) and cpu_name()
    hardware = {k: v for k, v in client.get_run(run_id).data.tags.items() if k.startswith("hardware.")}
    assert hardware == {"hardware.cpu": cpu_name(), "hardware.gpu": "none"}


@pytest.mark.slow(seconds=40)
def test_choosing_on_the_test_set_takes_the_best_evaluation_across_a_restart(local_ray, tiny_config, tmp_path):
    # eval.select test (the authors'): the best evaluation by eval.select_by, the one before the worker's restart
    # (from epoch 1's checkpoint) included; later epochs win ties.
    config = tiny_config("train.epochs=3", "eval.every=2", "train.steps_per_epoch=1", "eval.select=test",
                         "ray.max_failures=1")
    record = tmp_path / "chosen.json"
    result = fit(config, name="chosen", progress=False, fail_at_step=3, record_to=record)  # in epoch 2
    recorded = read_record(record)
    assert [e.epoch for e in recorded.history] == [1, 2, 3]
    assert [e.lr for e in recorded.history] == [config.train.lr] * 3  # no step within 3 epochs
    evaluated = [e for e in recorded.history if e.model_fields_set & {"rank1", "map"}]
    assert [(e.epoch, e.rank1 is not None, e.map is not None) for e in evaluated] == [(2, True, True), (3, True, True)]
    best, scores = max(evaluated, key=lambda e: (e.map, e.epoch)), recorded.scores["mars-official"]
    assert recorded.selection == "test" and recorded.best_epoch == result.best_epoch == best.epoch - 1
    assert (scores.rank1, scores.map) == (best.rank1, best.map)
    run_dir = str(Path(config.ray.storage_path) / "chosen")
    assert result.best_checkpoint == storage.join(run_dir, saved_epochs(run_dir)[result.best_epoch]["folder"])


def test_a_run_reports_its_last_evaluation_unless_told_to_choose_on_the_test_set():
    last, test = EvalConfig(select="last"), EvalConfig(select="test")
    early, late, tied = Best(1, 0.6), Best(3, 0.4), Best(3, 0.6)
    assert choose(last, early, late) is late and choose(test, early, late) is early
    assert choose(test, early, tied) is tied and choose(test, Best(), early) is early
    # Ray keeps the checkpoints of the highest scores: the newest under last, the best evaluated under test.
    assert checkpoint_score(last, 3, {"map": 0.1}) == 3.0 and checkpoint_score(last, 2, {}) == 2.0
    assert checkpoint_score(test, 3, {"map": 0.1, "rank1": 0.2}) == 0.1
    assert checkpoint_score(test, 2, {}) == NOT_EVALUATED


def test_a_resume_logs_checkpointed_epochs_mlflow_missed(tmp_path):
    client, experiment_id = connect(f"sqlite:///{tmp_path / 'mlflow.db'}", "nvan-bench")
    run_id = start_run(client, experiment_id, "r", {}, {})
    log_metrics(client, run_id, {"loss": 2.0}, step=0)
    for epoch, loss in ((0, 2.0), (1, 1.5)):  # epoch 1 was checkpointed, then the run stopped before MLflow heard
        folder = tmp_path / "run" / f"checkpoint_{epoch}"
        folder.mkdir(parents=True)
        (folder / "state.pt").write_bytes(b"state")
        (folder / "epoch.json").write_text(json.dumps({"epoch": epoch, "loss": loss, "lr": 1e-3,
                                                       "files": {"state.pt": 5}}))
    log_missing_epochs(client, run_id, saved_epochs(str(tmp_path / "run")))
    assert history(client, run_id, "loss") == [(0, 2.0), (1, 1.5)]


@pytest.mark.slow(seconds=50)
def test_ctrl_c_closes_the_run_and_says_how_to_resume(tiny_sets, tmp_path):
    # Also: without a terminal (stderr is a pipe here, as in a DVC stage) progress comes as log lines.
    args = [sys.executable, "-m", "harness.train", *tiny_sets, "--set", "train.epochs=30", "--name", "stopped"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=os.environ | {"NVAN_PROGRESS_INTERVAL_S": "0"})
    try:
        deadline = time.time() + 1800  # a net against a hang, not a speed limit
        while not list((tmp_path / "ray" / "stopped").glob("checkpoint_*/epoch.json")) and time.time() < deadline:
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=1800)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "--resume stopped" in err and "--name" not in err.split("Continue with:")[1]
    assert re.search(r"datasets.progress: epoch 0: \d+/\d+ steps \(\d+\.\d%\)", err), err[-3000:]
    assert "\r" not in err  # no bar redrawn into a log
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(find_run(client, client.get_experiment_by_name("nvan-bench").experiment_id,
                                  "nvan.ray_run", "stopped"))
    assert run.data.tags["nvan.status"] == "interrupted" and run.info.status == "KILLED"


def test_bad_inputs_fail_fast(local_ray, tiny_config, tmp_path):
    with pytest.raises(UserError, match="needed, 2 in the cluster"):
        fit(tiny_config("ray.num_workers=4"), progress=False)
    with pytest.raises(UserError, match="not prepared"):
        fit(tiny_config("data.dataset=duke"), progress=False)
    with pytest.raises(UserError, match="--resume nope"):
        fit(tiny_config(), resume="nope", progress=False)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() != 0:  # root may write anywhere
        with pytest.raises(UserError, match="not writable"):
            fit(tiny_config(f"ray.storage_path={locked / 'ray'}"), progress=False)


@pytest.mark.parametrize("override, message", [
    ("train.batch_size=9", "not divisible into P identities"),
    ("train.optimizer=lamb", "train.optimizer"),
    ("train.scheduler=warmup", "train.scheduler"),
    # The store holds 64 x 32 frames: training at 128 x 64 would record a model it did not train.
    ("data.height=128", "64 x 32 pixels (H x W) but data.height x data.width is 128 x 32"),
    ("data.dataset=duke", "datasets.prepare"),
])
def test_cli_rejects_bad_config(cli, tiny_sets, override, message):
    done = cli("harness.train", *tiny_sets, "--set", override)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_cli_exits_2_in_a_real_process(tiny_sets):
    proc = subprocess.run([sys.executable, "-m", "harness.train", *tiny_sets, "--set", "data.dataset=duke"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "datasets.prepare" in proc.stderr and "Traceback" not in proc.stderr


def test_sync_bn_covers_every_norm_including_the_bnneck():
    model = training_model(preset_spec("nvan", 5, width=4), sync_bn=True)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(norms) > 50 and all(isinstance(m, nn.SyncBatchNorm) for m in norms)
    assert isinstance(model.bottleneck, nn.SyncBatchNorm) and not model.bottleneck.bias.requires_grad
    assert isinstance(model.non_local.layer2[0].W[1], nn.SyncBatchNorm)
