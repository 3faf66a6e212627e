"""Full disks, for real: small tmpfs mounts under the run storage and under prepare's output.

Mounting needs root (or CAP_SYS_ADMIN); where it is not allowed the tests skip, saying so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

from datasets.errors import DatasetError
from datasets.prepare import prepare
from datasets.synthetic import write_mars
from harness.errors import UserError
from harness.results.tracking import find_run
from harness.train.driver import fit
from harness.train.run_dir import saved_epochs
from harness.cluster import ray_session


@pytest.fixture
def small_disk(tmp_path):
    """A factory: a tmpfs of `megabytes` MiB mounted at a fresh folder, unmounted afterwards."""
    mounted = []

    def mount(megabytes: int) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): a full disk needs one")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path, leave: int) -> Path:
    """Fill the disk under `folder` until `leave` bytes are free; return the filler file."""
    filler = folder / "filler"
    free = shutil.disk_usage(folder).free
    with open(filler, "wb") as f:
        f.truncate(0)
        os.posix_fallocate(f.fileno(), 0, max(free - leave, 0))
    return filler


@pytest.mark.slow(seconds=90)
def test_a_full_run_storage_stops_cleanly_and_resumes_once_there_is_room(tiny_config, small_disk, tmp_path):
    disk = small_disk(16)
    config = tiny_config("train.epochs=6", "train.steps_per_epoch=2", "eval.every=1", f"ray.storage_path={disk}")
    with ray_session(None, num_cpus=2):
        fit(tiny_config("train.epochs=1", "train.steps_per_epoch=2", f"ray.storage_path={disk}"), name="probe",
            progress=False)
        one = sum(f.stat().st_size for f in (disk / "probe").rglob("*") if f.is_file())
        shutil.rmtree(disk / "probe")
        filler = fill(disk, int(2.5 * one))  # room for about two checkpoints of the run below
        with pytest.raises(UserError, match=r"no space left on the device .* --resume full"):
            fit(config, name="full", progress=False)
        kept = saved_epochs(str(disk / "full"))
        assert kept and max(kept) < 5
        # Nothing half-written is trusted: a checkpoint the disk cut short is not among those a resume would use,
        # and every file of those it would use has the size it was written with.
        for epoch in kept.values():
            for name, size in epoch["files"].items():
                assert (disk / "full" / epoch["folder"] / name).stat().st_size == size
        filler.unlink()
        result = fit(config, resume="full", progress=False)
    assert result.epochs == 6
    client = MlflowClient(config.mlflow.tracking_uri)
    run_id = find_run(client, client.get_experiment_by_name("nvan-bench").experiment_id, "nvan.ray_run", "full")
    assert run_id == result.run_id
    assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == list(range(6))


def test_prepare_checks_the_room_it_needs_and_names_a_full_disk(small_disk, tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    write_mars(raw, identities=6, cameras=2, tracklets_per_id=2, min_frames=4, max_frames=6, height=64, width=32,
               distractors=0, junk=0, seed=0)
    disk = small_disk(1)
    with pytest.raises(DatasetError, match=r"not enough space for .*: the store needs about [\d,]+ bytes and .* has "
                                           r"[\d,]+ free"):
        prepare("mars", raw, disk / "prepared", height=128, width=64)
    # The room vanishes between the check and the writes (another writer): ENOSPC, named, nothing left behind.
    monkeypatch.setattr("datasets.prepare._check_space", lambda out, needed: None)
    with pytest.raises(DatasetError, match=r"the disk filled up while writing .*nothing was kept"):
        prepare("mars", raw, disk / "prepared", height=128, width=64)
    assert sorted(p.name for p in disk.iterdir()) == []
