"""Fresh copies of this project as git repositories, for tests that run DVC and the CLIs as a user would."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from harness.measure.hardware import cpu_name
from harness.results.records import read_record
from harness.cluster import numerics_env

ROOT = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).with_name("dvc"))


def run(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command in `cwd` with this project's code on the path; with `check`, assert it succeeds."""
    # dvc.yaml's stages call `python`: this interpreter's, whether or not its venv is activated.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = os.environ | {"RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(cwd), "PATH": path}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env)
    assert not check or proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def copy_project(dest: Path, keep: Callable[[str], bool], untracked: bool = False,
                 edit: Callable[[Path], None] | None = None) -> Path:
    """A git repository at `dest` holding the project's files that `keep` accepts, one commit."""
    listing = ["git", "ls-files", "--cached"] + (["--others", "--exclude-standard"] if untracked else [])
    files = subprocess.run(listing, cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file() and keep(name):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    if edit:
        edit(dest)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        run(*cmd, cwd=dest)
    return dest


def copy_with_params(dest: Path, params: dict) -> Path:
    """A git repository at `dest` holding the project's code (tracked and new files, no results), with `params`
    committed as its params.yaml: what a user has after a clone and an edit of params.yaml."""
    def write(copy: Path) -> None:
        (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    return copy_project(dest, lambda name: not name.startswith(("reports/", "dvc.lock")), untracked=True, edit=write)


def params_of(name: str) -> dict:
    """A committed params file of the project (params.yaml, examples/paper-mars.yaml, ...) as a tree."""
    return yaml.safe_load((ROOT / name).read_text())


def merge(base: dict, extra: dict) -> dict:
    """`base` with `extra` merged in, section by section; an empty mapping in `extra` replaces the section."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) and value else value
    return out


# The smallest sizes at which every stage of dvc.yaml runs on 2 cores: a narrow model on 4-frame 64 x 32 clips,
# one epoch of 2 steps, latency not measured (merged over a params file).
TINY = {
    "data": {"frames": 4, "height": 64, "width": 32},
    "model": {"width": 4},
    "presets": {"baseline": {}, "nvan": {}, "ste_nvan": {"stripes": [4, 4, 4, 4]}},
    "cost": {"width": 4, "measure": False},
    "train": {"epochs": 1, "batch_size": 8, "k": 2, "steps_per_epoch": 2},
    "eval": {"protocols": ["mars-official"]},
    "report": {"draws": 1000},
    "ray": {"cpus_per_worker": 1, "max_failures": 0},
}
# A tiny synthetic MARS: 6 training identities (P x K = 4 x 2 fits) and a test split of 6 seen by 3 cameras.
TINY_MARS = {"format": "mars", "identities": 12, "test_identities": 6, "cameras": 3, "tracklets_per_id": 4,
             "min_frames": 4, "max_frames": 8, "height": 64, "width": 32, "distractors": 1, "junk": 1, "seed": 0}


def ran_stages(proc: subprocess.CompletedProcess) -> set[str]:
    """The stages a `dvc repro` ran (or, with --dry, would run)."""
    return {line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage")}


def strings(value) -> list[str]:
    """Every string inside a JSON value."""
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


# A committed record of the preset whose forced rerun must reproduce it, where this machine can.
RECORD = ROOT / "reports" / "runs" / "baseline" / "seed0.json"


def _kernels() -> str:
    """The CPU kernels torch picks in a training worker on this machine (train.cpu_isa pinned)."""
    env = os.environ | numerics_env(read_record(RECORD).config.train.cpu_isa)
    return subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                          env=env, capture_output=True, text=True, check=True).stdout.strip()


def mismatch() -> str | None:
    """Why this machine cannot be expected to reproduce the committed baseline record bit for bit, or None."""
    recorded = read_record(RECORD).run
    found = {"CPU": cpu_name(), "torch": torch.__version__, "kernels": _kernels()}
    wanted = {"CPU": recorded.driver_cpu, "torch": recorded.torch, "kernels": recorded.cpu_capability}
    differ = [f"{k} {found[k]!r} here, {wanted[k]!r} in the record" for k in found if found[k] != wanted[k]]
    if (os.cpu_count() or 1) < recorded.threads_per_worker:
        differ.append(f"{os.cpu_count()} cores here, {recorded.threads_per_worker} threads in the record")
    return "; ".join(differ) or None
