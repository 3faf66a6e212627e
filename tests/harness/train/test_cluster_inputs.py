"""What a multi-node GPU cluster needs: storage URIs, whole GPUs, per-node input checks, a fed training loop."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from datasets.loaders import TrainClips, train_loader
from harness import storage
from harness.errors import ConfigError
from harness.params import load_config
from harness.train.node_check import NodeInputError, check_node
from harness.train.worker import LOADER_BOUND, build_optimizer, loader_warning, loader_workers, train_epoch
from models.video_reid import build_model

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("override, words", [
    ("ray.gpus_per_worker=0.5", ["ray.gpus_per_worker = 0.5", "whole GPU", "NCCL"]),
    ("ray.gpus_per_worker=0", ["at least 1"]),
    ("ray.storage_path=s4://bucket/x", ["ray.storage_path", "'s4'", "s3", "gs"]),
])
def test_cluster_settings_that_cannot_work_are_refused(override, words):
    with pytest.raises(ConfigError) as error:
        load_config(ROOT / "params.yaml", ["ray.use_gpu=true", override])
    assert all(w in str(error.value) for w in words), str(error.value)


def test_fractional_gpus_are_fine_without_gpu_training():
    assert load_config(ROOT / "params.yaml", ["ray.gpus_per_worker=0.5"]).ray.gpus_per_worker == 0.5


@pytest.mark.parametrize("location, parts, expected", [
    ("s3://b/runs?endpoint_override=h:1&scheme=http", ("sweep", "records"),
     "s3://b/runs/sweep/records?endpoint_override=h:1&scheme=http"),
    ("gs://b/runs/", ("r",), "gs://b/runs/r"),
    ("/shared/runs", ("r", "x.json"), "/shared/runs/r/x.json"),
])
def test_storage_join_keeps_a_uri_query(location, parts, expected):
    assert storage.join(location, *parts) == expected


def test_local_storage_paths_resolve_against_the_driver(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.absolute("runs") == str(tmp_path / "runs")
    assert storage.absolute("s3://b/runs") == "s3://b/runs"
    storage.write_text(storage.join("runs", "a", "b.json"), "{}")
    assert storage.read_text(str(tmp_path / "runs" / "a" / "b.json")) == "{}"
    assert storage.list_dirs("runs") == ["a"] and storage.is_dir("runs/a") and not storage.exists("runs/c")


def test_object_storage_reads_and_writes(s3_storage, tmp_path):
    record = storage.join(s3_storage, "sweep", "records", "t1.json")
    storage.write_text(record, json.dumps({"a": 1}))
    assert json.loads(storage.read_text(record)) == {"a": 1}
    assert storage.list_dirs(storage.join(s3_storage, "sweep")) == ["records"]
    storage.check_writable(s3_storage)
    assert storage.relative(record, s3_storage) == "sweep/records/t1.json"


def test_an_unreachable_bucket_is_a_user_error(s3_server):
    from harness.errors import UserError

    with pytest.raises(UserError, match="ray.storage_path .* is not writable .* credentials"):
        storage.check_writable(f"s3://testing:testing@no-such-bucket/x?endpoint_override={s3_server}&scheme=http"
                               f"&region=us-east-1")


def _copy(prepared: Path, to: Path) -> Path:
    shutil.copytree(prepared, to)
    return to


@pytest.mark.parametrize("problem, words", [
    ("missing", ["is not there", "manifest.json"]),
    ("stale", ["another version", "blake2b:other"]),
    ("no init", ["train.imagenet_init", "does not exist"]),
    ("storage", ["ray.storage_path is a local folder", "own disk"]),
])
def test_a_node_without_the_driver_inputs_fails_with_its_name_path_and_fix(prepared_root, tmp_path, problem, words):
    data = _copy(prepared_root / "mars", tmp_path / "mars")
    expected = json.loads((data / "manifest.json").read_text())["content_hash"]
    check_node(data, expected, None, None)  # this node has everything
    args = {"prepared": data, "manifest_hash": expected, "imagenet_init": None, "storage_probe": None}
    if problem == "missing":
        args["prepared"] = tmp_path / "elsewhere"
    elif problem == "stale":
        args["manifest_hash"] = "blake2b:other"
    elif problem == "no init":
        args["imagenet_init"] = tmp_path / "resnet50.pth"
    else:
        args["storage_probe"] = str(tmp_path / "ray" / "run" / ".driver-probe")
    with pytest.raises(NodeInputError) as error:
        check_node(**args)
    message = str(error.value)
    assert message.startswith("on node ") and all(w in message for w in words)
    assert ("dvc pull" in message) != (problem == "storage")


def test_loader_workers_default_to_the_cores_a_gpu_worker_has():
    config = load_config(ROOT / "params.yaml", ["ray.cpus_per_worker=8"])
    assert loader_workers(config.train, config.ray) == 0  # on a CPU every core computes
    gpu = load_config(ROOT / "params.yaml", ["ray.cpus_per_worker=8", "ray.use_gpu=true"])
    assert loader_workers(gpu.train, gpu.ray) == 7
    three = load_config(ROOT / "params.yaml", ["ray.use_gpu=true", "train.loader_workers=3"])
    assert loader_workers(three.train, three.ray) == 3


class SlowClips(torch.utils.data.Dataset):
    """TrainClips read from slow storage: each clip takes `seconds` longer to arrive."""

    def __init__(self, clips: TrainClips, seconds: float) -> None:
        self.clips, self.seconds, self.labels, self.seed = clips, seconds, clips.labels, clips.seed

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, item):
        time.sleep(self.seconds)
        return self.clips[item]


@pytest.mark.parametrize("seconds", [0.0, 0.25])
def test_a_loader_bound_epoch_is_measured_and_warned_about(prepared_root, seconds):
    config = load_config(ROOT / "params.yaml", [
        f"data.prepared_root={prepared_root}", "data.frames=4", "data.height=64", "data.width=32",
        "model.preset=baseline", "model.width=4", "train.batch_size=4", "train.k=2", "train.steps_per_epoch=4"])
    torch.manual_seed(0)
    data = TrainClips(prepared_root / "mars", 4, seed=0)
    model = build_model(config.spec(data.num_classes))
    loader = train_loader(SlowClips(data, seconds), config.train.p, config.train.k)
    stats = train_epoch(model, loader, build_optimizer(model, config.train), config.train, torch.device("cpu"))
    warning = loader_warning(stats, config.data.frames, 0)
    if seconds:  # 1 s of reading per step against a tiny model's fraction of that
        assert stats["loader_wait"] > LOADER_BOUND and "the data loader is the bottleneck" in warning
        assert "train.loader_workers (now 0)" in warning
    else:
        assert stats["loader_wait"] < LOADER_BOUND and warning is None


def test_a_resume_keeps_the_fp16_loss_scale(tmp_path):
    from harness.train.selection import Best
    from harness.train.worker import build_scheduler, restore, save_checkpoint
    from models.presets import preset_spec

    config = load_config(ROOT / "params.yaml")
    spec = preset_spec("baseline", 4, width=4)

    def objects():
        model = build_model(spec)
        optimizer = build_optimizer(model, config.train)
        return model, optimizer, build_scheduler(optimizer, config.train), torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)

    model, optimizer, scheduler, scaler = objects()
    scaler.scale(torch.ones(()))  # the scale exists once something is scaled
    scaler.update(new_scale=2.0 ** 9)  # where overflows during training left it
    save_checkpoint(tmp_path, model, spec, optimizer, scheduler, scaler, epoch=4, best=Best(3, 0.5))
    model, optimizer, scheduler, fresh = objects()
    assert restore(tmp_path, model, optimizer, scheduler, fresh) == (5, Best(3, 0.5), {})
    assert fresh.get_scale() == 2.0 ** 9 and fresh.state_dict() == scaler.state_dict()
