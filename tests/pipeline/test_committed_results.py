"""The committed benchmark reproduces: a forced rerun of train@baseline on a fresh copy gives the committed scores.

Training on a CPU is deterministic for a seed, the data, the thread count and the CPU kernels
torch runs (pinned to AVX2 by train.cpu_isa). Kernels of other CPU families round differently,
and tens of epochs from scratch turn rounding into points of accuracy, so the exact comparison runs
where the machine matches the one the record was made on, and skips elsewhere, saying why.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from harness.cost import cpu_name
from harness.records import read_record, reproducible_part
from harness.train import numerics_env
from project_copy import DVC, ROOT, copy_project, run, strings

RECORD = ROOT / "reports" / "runs" / "baseline.json"



def kernels() -> str:
    """The CPU kernels torch picks in a training worker on this machine (train.cpu_isa pinned)."""
    config = read_record(RECORD)["config"]
    env = os.environ | numerics_env(config["train"]["cpu_isa"])
    return subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                          env=env, capture_output=True, text=True, check=True).stdout.strip()


def mismatch() -> str | None:
    """Why this machine cannot be expected to reproduce the record bit for bit, or None."""
    run = read_record(RECORD)["run"]
    found = {"CPU": cpu_name(), "torch": torch.__version__, "kernels": kernels()}
    wanted = {"CPU": run["driver_cpu"], "torch": run["torch"], "kernels": run["cpu_capability"]}
    differ = [f"{k} {found[k]!r} here, {wanted[k]!r} in the record" for k in found if found[k] != wanted[k]]
    if (os.cpu_count() or 1) < run["threads_per_worker"]:
        differ.append(f"{os.cpu_count()} cores here, {run['threads_per_worker']} threads in the record")
    return "; ".join(differ) or None


@pytest.mark.parametrize("preset", ["baseline", "nvan", "ste_nvan"])
def test_committed_records_are_clean_and_complete(preset):
    record = read_record(ROOT / "reports" / "runs" / f"{preset}.json")
    assert len(record["git_commit"]) == 40 and "dirty" not in record["git_commit"]
    assert not [s for s in strings(record) if s.startswith("/") or s.startswith("~")]
    assert record["status"] == "finished" and record["preset"] == preset and record["label"] == preset
    assert set(record["scores"]) == set(record["config"]["eval"]["protocols"])
    assert record["cost"]["latency"]["median_s"] > 0 and record["run"]["cpu_capability"]


@pytest.mark.slow(seconds=220, cores=2)
def test_forced_rerun_reproduces_the_committed_baseline(tmp_path):
    why = mismatch()
    if why:
        pytest.skip(f"the committed record was made on another machine: {why}")
    # The committed tree: code, params, dvc.lock and the run records.
    clone = copy_project(tmp_path / "clone", lambda name: True)
    run(DVC, "repro", "prepare@mars", cwd=clone)  # the data is not in git: it is regenerated ...
    assert run("git", "diff", "--name-only", cwd=clone).stdout == ""  # ... to the locked hashes
    run(DVC, "repro", "-f", "-s", "train@baseline", cwd=clone)
    committed, rerun = read_record(RECORD), read_record(clone / "reports" / "runs" / "baseline.json")
    assert rerun["scores"] == committed["scores"]
    same = {k: v for k, v in reproducible_part(rerun).items() if k != "git_commit"}
    assert same == {k: v for k, v in reproducible_part(committed).items() if k != "git_commit"}
