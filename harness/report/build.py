"""Benchmark reports: Pareto plots (PNG, offline HTML), tables and DVC metrics (python -m harness.report).

The DVC `report` stage builds them from run records (`--runs reports/runs/<preset>.json`, see
harness/results/records.py) and sweep tables (`--sweep .../results.parquet`): files DVC tracks, so the
report is a function of its declared inputs. `--from-mlflow` reads an MLflow experiment instead,
for ad-hoc views across experiments and sweeps outside DVC.

Accuracy is shown in percent (runs store fractions). The cost axis (report.cost_axis) is GMACs
(1e9 multiply-accumulates, not FLOPs) per clip at the input each run was measured, T x H x W;
GMACs per test tracklet under the run's test sampler (dense evaluation runs ceil(F / T) clips
per tracklet); or measured latency, ms per clip on the device the run trained on. Datasets
are never mixed in one plot: every (dataset, synthetic) group gets its own row of panels,
table and metrics entry; on the latency axis every device does too, and so does every test set
(prepared data, protocol and query list; harness/report/testsets.py), with a note on what was not compared.
"""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from harness.errors import UserError
from harness.io import atomic_path, check_writable, write_json_atomic
from harness.measure.cost import UNITS as COST_UNITS
from harness.report.plot import draw, draw_epochs, svg_with_tooltips
from harness.evaluate.statistics import DEFAULT_DRAWS
from harness.report.points import assess_points
from harness.report.runs import (INTERVAL_METRICS, METRICS, collect_runs, load_costs, no_runs_message,
                                 published_points, select_runs)
from harness.report.decisions import decisions_section
from harness.report.html import html_page
from harness.results.decisions import Decision, read_decision
from harness.report.metric_files import comparison_metrics, metrics, write_point_metrics
from harness.report.tables import markdown

log = logging.getLogger("harness.report")



def epochs_svg(runs: pl.DataFrame | None) -> str | None:
    """The accuracy-against-epoch figure of `runs` as inline SVG with tooltips, or None where no run has a history."""
    drawn = None if runs is None else draw_epochs(runs)
    return None if drawn is None else svg_with_tooltips(*drawn)


def write_report(points: pl.DataFrame, published: pl.DataFrame | None, out_dir: Path, source: str,
                 costs: list[dict] | None = None, axis: str = "gmacs", comparisons: list[dict] = (),
                 runs: pl.DataFrame | None = None, decisions: list[Decision] = ()) -> list[Path]:
    """Write pareto.png/.html (with the accuracy-against-epoch figure of `runs`, the runs behind `points`),
    benchmark.md (with a section on `decisions`, the sequential ones), metrics.json, comparisons.json, pareto.csv, metrics/ (a file per point; harness/report/
    metric_files.py) and cost.json where there are costs, each file atomically; return them."""
    fig, tips = draw(points, published, axis)
    names = ("pareto.png", "pareto.html", "benchmark.md", "metrics.json", "comparisons.json", "pareto.csv")
    paths = [out_dir / n for n in names]
    with atomic_path(paths[0]) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    with atomic_path(paths[1]) as tmp:
        tmp.write_text(html_page(svg_with_tooltips(fig, tips), points, published, source, costs, axis, comparisons,
                                 epochs_svg(runs)))
    with atomic_path(paths[2]) as tmp:
        tmp.write_text(markdown(points, published, source, costs, axis, comparisons) + decisions_section(decisions))
    write_json_atomic(paths[3], metrics(points))
    write_json_atomic(paths[4], comparison_metrics(comparisons))
    with atomic_path(paths[5]) as tmp:
        columns = ("group", "dataset", "synthetic", "label", "kind", "status", "seeds", "input", "gmacs",
                   "gmacs_tracklet", "latency_ms", "latency_device", *(f"{m}_pct" for m in METRICS),
                   *(f"{m}_{s}_pct" for m in INTERVAL_METRICS for s in ("lo", "hi", "std")),
                   "pareto_rank1", "pareto_map", "p_front_rank1", "p_front_map", "sure_rank1", "sure_map",
                   "hardware", "selection", "run_id")
        points.select(columns).write_csv(tmp, float_precision=4)
    paths.append(out_dir / "metrics")
    write_point_metrics(paths[-1], points)
    if costs:
        paths.append(out_dir / "cost.json")
        write_json_atomic(paths[-1], {"units": COST_UNITS, "reports": costs})
    return paths



def build_report(out_dir: Path, *, records: list[Path] = (), sweeps: list[Path] = (),
                 mlflow: tuple[str, str] | None = None, dataset: str | None = None, latest_per_label: bool = True,
                 published: bool = True, cost_files: list[Path] | None = None, axis: str = "gmacs",
                 draws: int = DEFAULT_DRAWS, decision_files: list[Path] = ()) -> tuple[list[Path], pl.DataFrame, list[dict]]:
    """Write every report into `out_dir` from run records and sweep tables (or an MLflow experiment) and decision
    records (`decision_files`, harness.train --until-decided), accuracy
    against the cost `axis` (report.cost_axis), P(front) from `draws` draws of the points' sampling distribution;
    return the files written, the plotted points and the paired comparisons."""
    for name in ("pareto.png", "pareto.html", "benchmark.md", "metrics.json", "comparisons.json", "pareto.csv",
                 "cost.json"):
        check_writable(out_dir / name)
    costs = load_costs(cost_files or [])
    decisions = [read_decision(path) for path in decision_files]
    every, source = collect_runs(records=records, sweeps=sweeps, mlflow=mlflow)
    runs = select_runs(every, dataset, latest_per_label, axis)
    if runs.is_empty():
        have = sorted(every["dataset"].drop_nulls().unique().to_list())
        why = f"datasets with runs: {have}" if have else "it is empty"
        if mlflow is not None:
            raise UserError(no_runs_message(*mlflow, dataset, why))
        raise UserError(f"nothing to report: {source} hold no run{f' of dataset {dataset!r}' if dataset else ''} "
                        f"({why}); pass --runs FILE for each run record, or --dataset NAME")
    points, comparisons = assess_points(runs, draws)
    # The paper's numbers have GMACs per clip from our cost model, and no latency on any device of ours.
    refs = published_points() if published and axis == "gmacs" and (points["dataset"] == "mars").any() else None
    paths = write_report(points, refs, out_dir, source, costs, axis, comparisons, runs, decisions)
    log.info("%d runs as %d points in %d dataset group(s) -> %s", len(runs), len(points), points["group"].n_unique(),
             ", ".join(str(p) for p in paths))
    return paths, points, comparisons
