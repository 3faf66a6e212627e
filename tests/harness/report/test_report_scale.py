"""A sweep of many trials: above MANY_TRIALS trials in a group, the trials off both fronts are drawn as one collection
of dots and left out of the tables (a line says how many, and where they are); at or below it, every point is drawn
and listed one by one as before.

Built from the committed run records (three presets) and a small hand-made sweep table, with the threshold lowered to
that table's size: the layout is under test, not 10,000 rows (tests/benchmarks/test_report_scale.py times those).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from matplotlib.collections import PathCollection

from harness.report import tables
from harness.report.__main__ import format_summary
from harness.report.build import build_report
from harness.report.plot import BULK_LABEL, draw
from harness.report.runs import PANELS

ROOT = Path(__file__).resolve().parents[3]
PRESETS = ("baseline", "nvan", "ste_nvan")
TRIALS = 40


def sweep_table(path: Path, trials: int, seed: int = 0) -> Path:
    """A sweep's results.parquet of `trials` finished trials, aggregated over 3 seeds, accuracy rising with cost;
    the sweep calls the two best rank-1 trials surely on its front."""
    rng = np.random.default_rng(seed)
    gmacs = np.sort(rng.uniform(0.01, 0.2, trials))
    rank1 = np.clip(0.15 + 0.08 * np.log(gmacs / 0.01) + rng.normal(0, 0.05, trials), 0.01, 0.99)
    mean_ap = np.clip(0.6 * rank1 + rng.normal(0, 0.02, trials), 0.01, 0.99)
    half = rng.uniform(0.01, 0.04, trials)
    sure = rank1 >= np.sort(rank1)[-2]
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({
        "label": [f"t{i:05d}" for i in range(trials)], "status": ["finished"] * trials, "rank1": rank1,
        "map": mean_ap, "minp": mean_ap / 2, "gmacs_input": gmacs, "dataset": ["mars"] * trials,
        "synthetic": [True] * trials, "input": ["8x64x32"] * trials,
        "mlflow_run_id": [f"{i:032x}" for i in range(trials)],
        "git_commit": ["c" * 40] * trials, "seeds": [3] * trials,
        **{f"{m}_{s}": v + sign * half for m, v in (("rank1", rank1), ("map", mean_ap))
           for s, sign in (("lo", -1), ("hi", 1))},
        **{f"{m}_std": half for m in ("rank1", "map")},
        "p_front_rank1": np.where(sure, 0.99, 0.1), "p_front_map": np.full(trials, 0.1), "sure_rank1": sure,
        "sure_map": np.zeros(trials, dtype=bool),
    }).write_parquet(path)
    return path


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return sweep_table(tmp_path_factory.mktemp("sweeps") / "demo" / "results.parquet", TRIALS)


def build(out: Path, sweep: Path) -> tuple[pl.DataFrame, list[dict]]:
    """The report of the committed presets and `sweep` (few P(front) draws: the layout is under test)."""
    _, points, comparisons = build_report(out, records=[ROOT / "reports" / "runs" / p for p in PRESETS],
                                          sweeps=[sweep], dataset="mars", draws=200)
    return points, comparisons


def one_by_one(points: pl.DataFrame, accs: tuple[str, ...]) -> set[str]:
    """The labels of the presets and of the trials on a front (estimates' or sure) of `accs`."""
    front = pl.any_horizontal(*(pl.col(f"{f}_{a}").fill_null(False) for a in accs for f in ("pareto", "sure")))
    return set(points.filter((pl.col("kind") == "train") | front)["label"])


def main_table_labels(md: str) -> set[str]:
    """The point column of benchmark.md's first table under its group heading."""
    block = md.split("## mars (synthetic)", 1)[1].split("### Details", 1)[0]
    return {line.split(" | ")[1] for line in block.splitlines() if line.startswith("| ")} - {"point", "---"}


def pareto_tips(page: str) -> int:
    """The tooltips of the Pareto figure in pareto.html (the epoch figure's lines have their own)."""
    return len(re.findall(r'<g id="pt-[^"]*" class="point">', page))


def panel_artists(fig, tips: dict[str, str], col: int) -> tuple[list[PathCollection], set[str], int]:
    """A panel's bulk collections, the labels of its points drawn one by one (from their tooltips), its error bars."""
    ax = fig.axes[col]
    bulk = [c for c in ax.collections if c.get_label() == BULK_LABEL]
    drawn = {tips[c.get_gid()].split(" (")[0] for c in ax.collections if (c.get_gid() or "").startswith("pt-")}
    return bulk, drawn, len(ax.containers)


def test_above_the_threshold_trials_off_the_front_are_drawn_and_listed_in_bulk(sweep, tmp_path, monkeypatch):
    monkeypatch.setattr(tables, "MANY_TRIALS", TRIALS - 1)
    points, comparisons = build(tmp_path, sweep)
    presets = set(PRESETS)
    assert {c["a"] for c in comparisons} | {c["b"] for c in comparisons} == presets  # never a trial
    fig, tips = draw(points, None)
    for col, (acc, _) in enumerate(PANELS):
        shown = one_by_one(points, (acc,))
        bulk, drawn, bars = panel_artists(fig, tips, col)
        assert presets < shown and len(shown) < len(points)
        assert len(bulk) == 1 and len(bulk[0].get_offsets()) == len(points) - len(shown)
        assert drawn == shown and bars == len(shown)  # every point drawn one by one has its interval
        assert f"{len(points) - len(shown):,} sweep trials off the front" in fig.axes[col].get_title()
    listed = one_by_one(points, tuple(acc for acc, _ in PANELS))
    md, page = (tmp_path / "benchmark.md").read_text(), (tmp_path / "pareto.html").read_text()
    assert main_table_labels(md) == listed
    left = f"{len(points) - len(listed):,} more sweep trials, on neither front, are left out"
    assert left in md and left in page and "results.parquet of sweep demo" in md
    assert pareto_tips(page) == sum(len(one_by_one(points, (acc,))) for acc, _ in PANELS)
    assert set(re.findall(r"<td>(t\d{5})</td>", page)) == listed - presets
    console = format_summary(points, comparisons)
    assert left in console and set(re.findall(r"^  (t\d{5}) ", console, re.M)) == listed - presets


def test_at_the_threshold_every_point_is_drawn_and_listed_one_by_one(sweep, tmp_path, monkeypatch):
    monkeypatch.setattr(tables, "MANY_TRIALS", TRIALS)
    points, _ = build(tmp_path, sweep)
    fig, tips = draw(points, None)
    for col in range(len(PANELS)):
        bulk, drawn, bars = panel_artists(fig, tips, col)
        assert not bulk and drawn == set(points["label"]) and bars == len(points)
        assert "off the front" not in fig.axes[col].get_title()
    md, page = (tmp_path / "benchmark.md").read_text(), (tmp_path / "pareto.html").read_text()
    assert main_table_labels(md) == set(points["label"])
    assert "left out" not in md and "left out" not in page
    assert pareto_tips(page) == len(PANELS) * len(points)
