"""python -m harness.plan on the committed run records (reports/runs, 5 seeds a preset): it measures the paired
difference as the report does, turns a difference into seeds and hours and hours into a difference, and names the
folder and the fix of every bad input with exit code 2."""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from harness.cli import run
from harness.errors import UserError
from harness.evaluate.statistics import Sample, difference, mdd, seeds_needed
from harness.plan import at_seeds, main, read_arm, scalar, shared

ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "reports" / "runs"


def records(preset: str) -> list[dict]:
    """The committed records of a preset, as JSON."""
    return [json.loads(p.read_text()) for p in sorted((RUNS / preset).glob("seed*.json"))]


def output(capsys, *argv: str) -> str:
    assert main([*argv]) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def paired():
    """baseline - nvan: the arms, and their paired difference's estimate over SCORES."""
    a, b = read_arm(RUNS / "baseline"), read_arm(RUNS / "nvan")
    return a, b, difference(*shared(a, b))


def test_it_measures_the_committed_comparison_as_the_report_does(capsys):
    out = output(capsys, str(RUNS / "baseline"), str(RUNS / "nvan"))
    report = json.loads((ROOT / "reports" / "comparisons.json").read_text())["groups"]
    found = next(group["baseline - nvan"] for group in report.values() if "baseline - nvan" in group)
    assert out.startswith("baseline - nvan, paired by seed over 5 seeds (0, 1, 2, 3, 4)")
    for name, key in (("rank-1", "rank1"), ("mAP", "map")):
        assert f"{name}: {found[key]['diff']:+.2f} now; 5 seeds resolve {found[key]['mdd']:.2f} at 80 % power" in out
        a, b = ([r["scores"]["mars-official"][key] for r in records(p)] for p in ("baseline", "nvan"))
        assert (f"std baseline {100 * np.std(a, ddof=1):.2f}, nvan {100 * np.std(b, ddof=1):.2f}, paired "
                f"correlation {np.corrcoef(a, b)[0, 1]:+.2f}") in out
    seconds = {p: np.mean([r["run"]["seconds"] for r in records(p)]) for p in ("baseline", "nvan")}
    assert f"training {seconds['baseline']:.0f} s a seed for baseline, {seconds['nvan']:.0f} s for nvan" in out


def test_a_difference_becomes_seeds_and_hours(capsys, paired):
    a, b, est = paired
    out = output(capsys, str(RUNS / "baseline"), str(RUNS / "nvan"), "--delta", "4")  # 2 (README) takes seconds
    per_seed = sum(np.mean([r["run"]["seconds"] for r in records(p)]) for p in ("baseline", "nvan"))
    for name, key in (("rank-1", "rank1"), ("mAP", "map")):
        section = out.split(f"{name}: ")[1]
        fixed = int(seeds_needed(scalar(est, key), np.asarray(0.04)))
        assert (f"4 points at 80 % power: fixed design {fixed} seeds per arm ({fixed * per_seed / 3600:.1f} h of "
                f"training on cpu: AMD EPYC)") in section
        power, mean, most = re.search(r"power (\d+) %, ([\d.]+) seeds per arm on average .* at most (\d+)",
                                      section).groups()
        assert int(power) >= 80 and float(mean) < fixed <= int(most) <= 1.2 * fixed


def test_hours_become_the_smallest_difference_they_resolve(capsys, paired):
    a, b, est = paired
    out = output(capsys, str(RUNS / "baseline"), str(RUNS / "nvan"), "--budget-hours", "10")
    seeds = math.floor(10 * 3600 / (a.seconds + b.seconds))
    assert seeds == 12
    for name, key in (("rank-1", "rank1"), ("mAP", "map")):
        resolves = 100 * float(mdd(at_seeds(scalar(est, key), seeds)))
        assert f"10 h buys 12 seeds per arm: resolves {resolves:.2f} points at 80 % power" in out.split(f"{name}: ")[1]


def test_max_seeds_gives_the_sequential_look_at_the_seeds_so_far(capsys):
    out = output(capsys, str(RUNS / "baseline"), str(RUNS / "ste_nvan"), "--max-seeds", "8")
    assert "8 seeds per arm resolve" in out
    assert out.count("sequential look at 5 seeds (plan 2..8): decided, +") == 2
    out = output(capsys, str(RUNS / "baseline"), str(RUNS / "nvan"), "--max-seeds", "8")
    assert re.search(r"rank-1: .*\n(.*\n){3}  sequential look at 5 seeds \(plan 2\.\.8\): (futile|continue)", out)


def copy_seeds(source: str, seeds: list[int], target: Path) -> Path:
    """A folder holding the committed records (and per-query files) of `source`'s `seeds`."""
    target.mkdir()
    for k in seeds:
        for suffix in (".json", ".queries.parquet"):
            shutil.copy(RUNS / source / f"seed{k}{suffix}", target / f"seed{k}{suffix}")
    return target


@pytest.mark.parametrize("case, message", [
    ("missing", r"/missing is not a folder of run records; give the folder `python -m harness.train --all-seeds"),
    ("empty", r"holds no run record \(\*\.json\); train the preset into it"),
    ("no shared seeds", r"\(seeds \[0, 1\]\) and .* \(seeds \[2, 3, 4\]\) share 0 seed\(s\); pairing needs at least 2"),
    ("one shared seed", r"share 1 seed\(s\); pairing needs at least 2 seeds trained in both"),
    ("max seeds", r"--max-seeds 1: a paired comparison needs at least 2 seeds per arm"),
])
def test_bad_input_is_one_paragraph_naming_it_and_exit_2(tmp_path, capsys, case, message):
    a, b = RUNS / "baseline", RUNS / "nvan"
    extra = []
    if case == "missing":
        b = tmp_path / "missing"
    elif case == "empty":
        (b := tmp_path / "empty").mkdir()
    elif case == "no shared seeds":
        a, b = copy_seeds("baseline", [0, 1], tmp_path / "a"), copy_seeds("nvan", [2, 3, 4], tmp_path / "b")
    elif case == "one shared seed":
        a, b = copy_seeds("baseline", [0, 1], tmp_path / "a"), copy_seeds("nvan", [1, 2], tmp_path / "b")
    else:
        extra = ["--max-seeds", "1"]
    with pytest.raises(SystemExit) as exit_:
        run(main, [str(a), str(b), *extra])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and re.search(message, error), error


def test_a_negative_delta_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main([str(RUNS / "baseline"), str(RUNS / "nvan"), "--delta", "-1"])
    assert exit_.value.code == 2 and "--delta: invalid positive float value" in capsys.readouterr().err


def test_arms_on_different_test_sets_are_refused_naming_both(paired):
    a, b, _ = paired
    fewer = Sample(b.sample.seeds, b.sample.values[..., :-1], b.sample.clusters[:-1])
    with pytest.raises(UserError, match=r"baseline and .*nvan were scored on different test sets \(\d+ and \d+ queries"):
        shared(a, replace(b, sample=fewer))
