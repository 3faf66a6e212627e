"""python -m harness.report: read run records (or an MLflow experiment) and write the reports."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from harness.errors import UserError
from harness.cli import config_parser, load_from_args, run
from harness.report.build import build_report
from harness.report.runs import AXES, PANELS
from harness.report.tables import decided_text, fmt, in_bulk, latency_text, left_out_text, plus_minus, point_notes
from harness.report.testsets import notes
from harness.results.tracking import tracking_uri


def comparison_summary(pairs: list[dict]) -> str:
    """'k of n comparisons decided (per-comparison 95 %; m survive Holm)', then the decided ones."""
    found = [(c, key, name) for c in pairs for key, name in (("rank1", "rank-1"), ("map", "mAP"))]
    decided = [decided_text(c, key, name) for c, key, name in found if c[key]["decided"]]
    holm = sum(c[key]["decided_holm"] for c, key, _ in found)
    return (f"  {len(decided)} of {len(found)} comparisons decided (per-comparison 95 %; {holm} survive Holm)"
            + (": " + "; ".join(decided) if decided else ""))


def format_summary(points: pl.DataFrame, comparisons: list[dict] = ()) -> str:
    """The console summary: per group, each point's accuracy with its 95 % interval, cost and training time (a crowd
    of sweep trials off the front in one line, as the tables), then which paired comparisons the data decides;
    last, which points were not compared for being on other test sets."""
    lines = []
    for group in points["group"].unique(maintain_order=True):
        rows = points.filter(pl.col("group") == group)
        bulk = rows.select(in_bulk(tuple(acc for acc, _ in PANELS))).to_series()
        left, rows = rows.filter(bulk), rows.filter(~bulk)
        lines += [f"{group}: rank-1 / mAP (%), mean over seeds ± half its 95 % interval (seeds and queries), "
                  f"std over seeds, P(on the Pareto front); GMACs per clip, latency (ms per clip), training time",
                  f"  {'point':<24}{'seeds':>6}{'rank-1':>14}{'std':>6}{'P':>6}{'mAP':>14}{'std':>6}{'P':>6}"
                  f"{'GMACs':>9}{'latency ms':>14}{'trained s':>11}"]
        for r in rows.iter_rows(named=True):
            lines.append(f"  {r['label'][:23]:<24}{r['seeds']:>6}{plus_minus(r, 'rank1'):>14}"
                         f"{fmt(r['rank1_std_pct'], '.1f'):>6}{fmt(r['p_front_rank1'], '.2f'):>6}"
                         f"{plus_minus(r, 'map'):>14}{fmt(r['map_std_pct'], '.1f'):>6}{fmt(r['p_front_map'], '.2f'):>6}"
                         f"{fmt(r['gmacs'], '.4g'):>9}{latency_text(r):>14}{fmt(r['train_s'], '.0f'):>11}")
        lines += [f"  note: {n}" for n in ([left_out_text(left)] if left.height else []) + point_notes(rows)]
        pairs = [c for c in comparisons if c["group"] == group]
        if pairs:
            lines.append(comparison_summary(pairs))
        total = pl.concat([rows, left])["train_s"].drop_nulls().sum()
        if total:
            lines.append(f"  training took {total:.0f} s in all ({total / 60:.1f} min), seeds summed")
    return "\n".join(lines + [f"note: {n}" for n in notes(points)])


def main(argv: list[str] | None = None) -> int:
    """python -m harness.report: read run records (or an MLflow experiment) and write the reports."""
    parser = config_parser(
        "harness.report", "Benchmark reports: Pareto plots (PNG, offline HTML), tables and DVC metrics.",
        ["python -m harness.report --runs reports/runs/baseline --runs reports/runs/nvan --runs reports/runs/ste_nvan "
         "--cost reports/cost/nvan.json --out-dir reports/adhoc",
         "python -m harness.report --sweep reports/sweeps/cpu-demo/results.parquet --out-dir reports/sweeps/cpu-demo",
         "python -m harness.report --from-mlflow --out-dir reports/mlflow"])
    parser.add_argument("--runs", type=Path, action="append", default=[], metavar="FILE",
                        help="a run record written by `harness.train --out`, or a folder of them (--all-seeds; "
                             "repeatable); its per-query outcomes (.queries.parquet) beside it give the intervals")
    parser.add_argument("--sweep", type=Path, action="append", default=[], metavar="FILE",
                        help="a sweep's results.parquet (repeatable)")
    parser.add_argument("--decision", type=Path, action="append", default=[], metavar="FILE",
                        help="a decision.json written by `harness.train --until-decided` (repeatable): its verdict, "
                             "seeds, interval and compute in benchmark.md")
    parser.add_argument("--from-mlflow", action="store_true",
                        help="report the runs of an MLflow experiment instead (ad hoc; not for DVC stages)")
    parser.add_argument("--dataset", help="only runs of this prepared dataset (default: report.dataset; "
                                          "null there = every dataset, each in its own row of panels)")
    parser.add_argument("--experiment", help="with --from-mlflow: the experiment (default: mlflow.experiment)")
    parser.add_argument("--out-dir", type=Path, help="output folder (default: report.out_dir)")
    parser.add_argument("--cost-axis", choices=sorted(AXES),
                        help="x axis of the plots and Pareto fronts (default: report.cost_axis)")
    parser.add_argument("--cost", type=Path, action="append", default=[], metavar="FILE",
                        help="a cost file written by `python -m harness.cost --out`, e.g. reports/cost/nvan.json, to "
                             "merge into cost.json and the tables (repeatable)")
    args = parser.parse_args(argv)
    cfg = load_from_args(args)
    if args.from_mlflow == bool(args.runs or args.sweep):
        raise UserError("give the runs to report: --runs FILE (run records) and/or --sweep FILE (sweep tables), "
                        "or --from-mlflow for an MLflow experiment, not both")
    mlflow = (tracking_uri(cfg.mlflow.tracking_uri), args.experiment or cfg.mlflow.experiment) if args.from_mlflow \
        else None
    _, points, comparisons = build_report(args.out_dir or cfg.report.out_dir, records=args.runs, sweeps=args.sweep, mlflow=mlflow,
                             dataset=args.dataset or cfg.report.dataset, latest_per_label=cfg.report.latest_per_label,
                             published=cfg.report.published, cost_files=args.cost,
                             axis=args.cost_axis or cfg.report.cost_axis, draws=cfg.report.draws,
                             decision_files=args.decision)
    print(format_summary(points, comparisons))
    return 0


if __name__ == "__main__":
    run(main)
