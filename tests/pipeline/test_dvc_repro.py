"""The whole benchmark as a user runs it: `dvc repro` in a fresh git repository, on tiny params."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DVC = str(Path(sys.executable).with_name("dvc"))

pytestmark = pytest.mark.slow

TINY = {
    "synthetic": {
        "mars": {"format": "mars", "identities": 12, "cameras": 3, "tracklets_per_id": 4, "min_frames": 4,
                 "max_frames": 8, "height": 64, "width": 32, "distractors": 1, "junk": 1, "seed": 0},
        "duke": {"format": "duke", "identities": 8, "cameras": 3, "tracklets_per_id": 4, "min_frames": 4,
                 "max_frames": 8, "height": 64, "width": 32, "distractors": 1, "junk": 0, "seed": 1},
    },
    "data": {"frames": 4, "height": 64, "width": 32},
    "model": {"width": 4},
    "presets": {"baseline": {}, "nvan": {}, "ste_nvan": {"stripes": [4, 4, 4, 4]}},
    "cost": {"width": 4, "measure": False},
    "train": {"epochs": 1, "batch_size": 8, "k": 2, "steps_per_epoch": 2},
    "eval": {"protocols": ["mars-official"]},
    "ray": {"cpus_per_worker": 1, "max_failures": 0},
}


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) and value else value
    return out


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(cwd)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A git repository holding the project's files (tracked and new), with tiny params committed."""
    repo = tmp_path_factory.mktemp("clone")
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file() and not name.startswith(("reports/", "dvc.lock")):
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    params = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"]):
        run(*cmd, cwd=repo)
    return repo


def test_repro_noop_and_partial_rerun(repo):
    run(DVC, "repro", cwd=repo)
    presets = ("baseline", "nvan", "ste_nvan")
    outs = ["data/prepared/mars/manifest.json", "data/prepared/duke/manifest.json",
            *(f"reports/cost/{p}.json" for p in presets), *(f"reports/runs/{p}.json" for p in presets),
            *(f"reports/{f}" for f in ("pareto.png", "pareto.html", "benchmark.md", "metrics.json", "pareto.csv", "cost.json"))]
    assert [o for o in outs if not (repo / o).exists()] == []
    assert "baseline" in (repo / "reports/benchmark.md").read_text()
    costed = json.loads((repo / "reports/cost.json").read_text())["reports"]
    assert sorted({r["name"] for r in costed}) == sorted(presets)

    again = run(DVC, "repro", cwd=repo)
    assert "Running stage" not in again.stdout

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["presets"]["nvan"] = {"nl_window": 2}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = run(DVC, "repro", cwd=repo)
    ran = {line.split("'")[1] for line in changed.stdout.splitlines() if line.startswith("Running stage")}
    assert ran == {"cost@nvan", "train@nvan", "report"}
