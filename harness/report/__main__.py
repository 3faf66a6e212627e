"""python -m harness.report: read run records (or an MLflow experiment) and write the reports."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from harness.cli import UserError, config_parser, load_from_args, run
from harness.report.build import build_report
from harness.report.runs import AXES
from harness.report.tables import fmt, latency_text
from harness.results.tracking import tracking_uri


def format_summary(points: pl.DataFrame) -> str:
    """The console summary: per dataset group, each run's accuracy, cost and training time."""
    lines = []
    for group in points["group"].unique(maintain_order=True):
        rows = points.filter(pl.col("group") == group)
        lines += [f"{group}: rank-1 / mAP (%) at the best checkpoint, GMACs per clip and per test tracklet, "
                  f"latency (ms per clip), training time",
                  f"  {'run':<28}{'rank-1':>8}{'mAP':>8}{'GMACs':>10}{'GMACs/trk':>11}{'latency ms':>16}"
                  f"{'trained s':>11}"]
        for r in rows.iter_rows(named=True):
            lines.append(f"  {r['label'][:27]:<28}{fmt(r['rank1_pct'], '8.1f')}{fmt(r['map_pct'], '8.1f')}"
                         f"{fmt(r['gmacs'], '10.4g')}{fmt(r['gmacs_tracklet'], '11.4g')}{latency_text(r):>16}"
                         f"{fmt(r['train_s'], '11.0f')}")
        total = rows["train_s"].drop_nulls().sum()
        if total:
            lines.append(f"  training took {total:.0f} s in all ({total / 60:.1f} min)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """python -m harness.report: read run records (or an MLflow experiment) and write the reports."""
    parser = config_parser("harness.report", "Benchmark reports: Pareto plots (PNG, offline HTML), tables and DVC metrics.")
    parser.add_argument("--runs", type=Path, action="append", default=[], metavar="FILE",
                        help="a run record written by `harness.train --out` (repeatable)")
    parser.add_argument("--sweep", type=Path, action="append", default=[], metavar="FILE",
                        help="a sweep's results.parquet (repeatable)")
    parser.add_argument("--from-mlflow", action="store_true",
                        help="report the runs of an MLflow experiment instead (ad hoc; not for DVC stages)")
    parser.add_argument("--dataset", help="only runs of this prepared dataset (default: report.dataset; "
                                          "null = every dataset, each in its own row of panels)")
    parser.add_argument("--experiment", help="with --from-mlflow: the experiment (default: mlflow.experiment)")
    parser.add_argument("--out-dir", type=Path, help="output folder (default: report.out_dir)")
    parser.add_argument("--cost-axis", choices=sorted(AXES),
                        help="x axis of the plots and Pareto fronts (default: report.cost_axis)")
    parser.add_argument("--cost", type=Path, action="append", default=[],
                        help="a `python -m harness.cost --out` file to merge into cost.json and the tables (repeatable)")
    args = parser.parse_args(argv)
    cfg = load_from_args(args)
    if args.from_mlflow == bool(args.runs or args.sweep):
        raise UserError("give the runs to report: --runs FILE (run records) and/or --sweep FILE (sweep tables), "
                        "or --from-mlflow for an MLflow experiment, not both")
    mlflow = (tracking_uri(cfg.mlflow.tracking_uri), args.experiment or cfg.mlflow.experiment) if args.from_mlflow \
        else None
    _, points = build_report(args.out_dir or cfg.report.out_dir, records=args.runs, sweeps=args.sweep, mlflow=mlflow,
                             dataset=args.dataset or cfg.report.dataset, latest_per_label=cfg.report.latest_per_label,
                             published=cfg.report.published, cost_files=args.cost,
                             axis=args.cost_axis or cfg.report.cost_axis)
    print(format_summary(points))
    return 0


if __name__ == "__main__":
    run(main)
