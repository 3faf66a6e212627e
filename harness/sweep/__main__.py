"""python -m harness.sweep: a Ray Tune sweep of accuracy against cost, and its Pareto front on the console."""

from __future__ import annotations

import logging

import polars as pl

from harness import preemption
from harness.cli import config_parser, load_from_args, run
from harness.sweep.driver import EXIT_CODES, SweepOutcome, run_sweep, sweep_status
from harness.sweep.space import COST, COST_LABELS, LATENCY, cost_key

log = logging.getLogger("harness.sweep")


def _pm(row: dict, metric: str) -> str:
    """'26.0 ± 3.1' (percent): the mean over seeds and half its 95 % interval, where there is one."""
    low, high = row[f"{metric}_lo"], row[f"{metric}_hi"]
    return f"{100 * row[metric]:.1f}" + ("" if low is None else f" ± {50 * (high - low):.1f}")


def format_front(outcome: SweepOutcome, metric: str, protocol: str, cost: str = COST) -> str:
    """The Pareto front as a console table, cheapest first (accuracy in percent; GMACs per clip, latency in ms)."""
    front = outcome.results.filter("pareto").sort(cost)
    counts = outcome.results["status"].value_counts(sort=True)
    lines = [f"sweep {outcome.name}: {outcome.results.height} trials ("
             + ", ".join(f"{n} {s}" for s, n in counts.iter_rows()) + f") in {outcome.seconds:.0f} s; "
             f"results {outcome.path}",
             f"Pareto front of the means: max {metric} ({protocol}, best checkpoint) vs min {COST_LABELS[cost]}; "
             f"accuracy in percent, mean over seeds ± half its 95 % interval (seeds x queries), P = P(on the front)",
             f"{'label':<36}{'status':>14}{'seeds':>6}{metric:>14}{'P':>6}{'rank1':>14}{'GMACs':>9}{'GMACs@in':>10}"
             f"{'ms':>9}{'epochs':>7}{'race':>10}"]
    for row in front.iter_rows(named=True):
        ms = row.get(LATENCY)
        lines.append(f"{row['label']:<36}{row['status']:>14}{row['seeds']:>6}{_pm(row, metric):>14}"
                     f"{'-' if row[f'p_front_{metric}'] is None else format(row[f'p_front_{metric}'], '.2f'):>6}"
                     f"{_pm(row, 'rank1'):>14}{row[COST]:9.3f}{row['gmacs_input']:10.4f}"
                     f"{'-' if ms is None else f'{ms:.1f}':>9}{row['epochs']:7d}{row.get('race') or '-':>10}")
    if cost == LATENCY and front.height:
        lines.append(f"latency measured on: {', '.join(sorted(set(front['latency_device'].drop_nulls())))}")
    if front.is_empty():
        lines.append("(no trial finished: nothing to compare)")
    failed = outcome.results.filter(pl.col("status") == "failed")
    for row in failed.iter_rows(named=True):
        lines.append(f"FAILED: trial {row['label']} (MLflow run {row['mlflow_run_id']}); its error is in the Ray "
                     f"logs under the sweep's folder")
    if not outcome.complete:
        what = "preempted (SIGTERM)" if preemption.requested() else "interrupted"
        took = preemption.seconds_since()
        lines.append(f"{what}{f' {took:.1f} s ago' if took else ''}: continue with "
                     f"`python -m harness.sweep --resume --name {outcome.name}`")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = config_parser(
        "harness.sweep", "Sweep models on Ray Tune: accuracy vs GMACs over non-local placement, reduction, sampling.",
        ["python -m harness.sweep --num-samples 8 --max-concurrent 2 --name cpu-demo",
         "python -m harness.sweep --resume --name cpu-demo",
         "python -m harness.sweep --params examples/sweep-8gpu.yaml --address auto"])
    parser.add_argument("--address", help="Ray cluster to join, e.g. 'auto' (default: ray.address, else a local Ray)")
    parser.add_argument("--name", help="sweep name (default: sweep.name, else sweep-<time>)")
    parser.add_argument("--num-samples", type=int, help="trials (default: sweep.num_samples)")
    parser.add_argument("--max-concurrent", type=int, help="trials at once (default: sweep.max_concurrent)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted sweep --name with its saved config "
                             "(finished trials are not rerun)")
    args = parser.parse_args(argv)
    for key, value in (("ray.address", args.address), ("sweep.name", args.name),
                       ("sweep.num_samples", args.num_samples), ("sweep.max_concurrent", args.max_concurrent)):
        if value is not None:
            args.overrides.append(f"{key}={value}")
    config = load_from_args(args)
    preemption.interrupt_on_sigterm()  # a SIGTERM ends the sweep as Ctrl-C does (Tune saves it), as preempted
    outcome = run_sweep(config, resume=args.resume)
    print(format_front(outcome, config.sweep.metric, config.eval.primary, cost_key(config.sweep)))
    return EXIT_CODES[sweep_status(outcome.results, outcome.complete)]


if __name__ == "__main__":
    run(main)
