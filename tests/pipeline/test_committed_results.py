"""The committed benchmark reproduces: a forced rerun of train@baseline's first seed on a fresh copy gives its
committed record.

Training on a CPU is deterministic for a seed, the data, the thread count and the CPU kernels
torch runs (pinned to AVX2 by train.cpu_isa). Kernels of other CPU families round differently,
and tens of epochs from scratch turn rounding into points of accuracy, so the exact comparison runs
where the machine matches the one the record was made on, and skips elsewhere, saying why.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from harness.evaluate.queries import queries_path, read_queries
from harness.results.records import read_record, reproducible_part
from project_copy import DVC, ROOT, copy_project, mismatch, run, strings

SEEDS = yaml.safe_load((ROOT / "params.yaml").read_text())["seeds"]
PRESETS = ("baseline", "nvan", "ste_nvan")


@pytest.mark.parametrize("preset", PRESETS)
def test_committed_records_are_clean_and_complete(preset):
    for seed in SEEDS:
        path = ROOT / "reports" / "runs" / preset / f"seed{seed}.json"
        record = read_record(path)
        assert len(record.git_commit) == 40 and "dirty" not in record.git_commit
        assert not [s for s in strings(record.written()) if s.startswith("/") or s.startswith("~")]
        assert record.status == "finished" and record.preset == preset and record.label == preset
        assert record.config.seed == seed
        assert set(record.scores) == set(record.config.eval.protocols)
        assert all(s.ci95["rank1"][0] <= s.rank1 <= s.ci95["rank1"][1] for s in record.scores.values())
        assert record.cost.latency.median_s > 0 and record.run.cpu_capability
        assert read_queries(queries_path(path)).height == sum(s.num_queries for s in record.scores.values())


@pytest.mark.parametrize("preset", PRESETS)
def test_committed_metrics_are_each_presets_records(preset):
    """reports/metrics/<preset>.json, what `dvc metrics show` prints as the preset's row: its seeds' mean scores."""
    assert sorted(p.name for p in (ROOT / "reports" / "metrics").iterdir()) == [f"{p}.json" for p in PRESETS]
    found = json.loads((ROOT / "reports" / "metrics" / f"{preset}.json").read_text())
    records = [read_record(ROOT / "reports" / "runs" / preset / f"seed{seed}.json") for seed in SEEDS]
    assert found["seeds"] == len(SEEDS)
    for metric in ("rank1", "map"):
        mean = 100 * sum(getattr(r.primary_scores, metric) for r in records) / len(records)
        assert found[metric] == pytest.approx(mean, abs=0.0051)  # rounded to 0.01 points of percent
        assert found[f"{metric}_lo"] < found[metric] < found[f"{metric}_hi"]
    assert found["gmacs"] == pytest.approx(records[0].cost.gmacs, rel=1e-3)


@pytest.mark.slow(seconds=420, cores=1)
def test_forced_rerun_reproduces_the_committed_baseline(tmp_path):
    why = mismatch()
    if why:
        pytest.skip(f"the committed record was made on another machine: {why}")
    # The committed tree: code, params, dvc.lock and the run records.
    clone = copy_project(tmp_path / "clone", lambda name: True)
    run(DVC, "repro", "prepare@mars", cwd=clone)  # the data is not in git: it is regenerated ...
    assert run("git", "diff", "--name-only", cwd=clone).stdout == ""  # ... to the locked hashes
    # train@baseline's own command, for its first seed only: a seed trains alone in its worker, so it is the same
    # run as inside the stage's set (the whole set would add minutes and prove nothing more).
    seed, out = SEEDS[0], clone / "rerun"
    run("python", "-m", "harness.train", "--set", "model.preset=baseline", "--all-seeds", "--set", f"seeds=[{seed}]",
        "--no-progress", "--out", str(out), cwd=clone)
    name = Path("reports") / "runs" / "baseline" / f"seed{seed}.json"
    committed, rerun = read_record(ROOT / name), read_record(out / f"seed{seed}.json")
    assert rerun.scores == committed.scores and rerun.history == committed.history
    same = {k: v for k, v in reproducible_part(rerun.written()).items() if k != "git_commit"}
    assert same == {k: v for k, v in reproducible_part(committed.written()).items() if k != "git_commit"}
    assert read_queries(queries_path(out / f"seed{seed}.json")).equals(read_queries(queries_path(ROOT / name)))
