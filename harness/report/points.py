"""From runs to the points a report shows: one per configuration, over its seeds, with how sure each number is.

A point is every run of one label and configuration (`config_key`) in a group (one test set of a
dataset, `harness.report.testsets`): its scores
are the means over its seeds, with the sample std over seeds and a 95 % interval from the two-way
(seeds x queries) bootstrap of `harness.evaluate.statistics`, its P(on the Pareto front) and, for
every pair of trained presets, the paired difference. All of a group's points are resampled on one
query draw, so their intervals, differences and front odds come from the same replicates. A point
lacks them where some of its runs kept no per-query outcomes (MLflow-only runs, older records);
a sweep's trials arrive aggregated by the sweep, with its own intervals and front odds.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import polars as pl

from harness.evaluate.queries import outcomes_of, read_queries
from harness.evaluate.statistics import (DEFAULT_RESAMPLES, SCORES, Sample, compare, front_probability, interval,
                                         query_values, replicates)
from harness.report.runs import INTERVAL_METRICS, METRICS, PANELS

SURE = 0.95  # P(on the front) at which a point is drawn as surely on it
KEY = ("group", "label", "config_key")


def aggregate(runs: pl.DataFrame) -> pl.DataFrame:
    """One row per point: seed means of the scores, sample std over seeds, the seeds and their queries files."""
    first = [c for c in runs.columns if c not in (*KEY, *METRICS, "seed", "seeds", "queries", "train_s", "start_time",
                                                   "run_id", *(f"{m}_std" for m in INTERVAL_METRICS))]
    return runs.group_by(KEY, maintain_order=True).agg(
        *(pl.col(c).first() for c in first),
        *(pl.col(m).mean() for m in METRICS),
        # A sweep's row brings its own std over seeds; a record is one seed, and seeds of a point are its rows.
        *(pl.when(pl.len() > 1).then(pl.col(m).std(ddof=1)).otherwise(pl.col(f"{m}_std").first()).alias(f"{m}_std")
          for m in INTERVAL_METRICS),
        pl.col("seeds").sum(), pl.col("seed").alias("seed_list"), pl.col("queries").alias("query_files"),
        pl.col("train_s").sum(),
        # Every seed's MLflow run, in seed order: a point is all of them, not its first seed's.
        pl.col("run_id").sort_by("seed").str.join(" ").replace("", None).alias("run_id"),
        pl.col("start_time").max(),
    )


def samples(points: pl.DataFrame) -> dict[int, Sample]:
    """The per-query values of each point (row index) whose every run kept them, on its primary protocol; sweep
    trials come aggregated, and points without a cost cannot be placed."""
    out = {}
    for i, row in enumerate(points.iter_rows(named=True)):
        files, seeds = row["query_files"], row["seed_list"]
        if row["kind"] == "trial" or row["cost"] is None or not files or None in files or None in seeds:
            continue
        # One group is one test set (harness.report.testsets): its seeds' queries pair up by index.
        values = [query_values(outcomes_of(read_queries(f, row["preset"]), row["protocol"])) for f in files]
        out[i] = Sample(tuple(seeds), np.stack(values))
    return out


def with_uncertainty(runs: pl.DataFrame, resamples: int = DEFAULT_RESAMPLES) -> tuple[pl.DataFrame, list[dict]]:
    """The points of `runs` with their intervals and P(front) per panel, accuracy in percent (`<metric>_pct`), and
    the paired comparisons of every two trained points of a group."""
    points = aggregate(runs)
    for acc, _ in PANELS:
        points = deterministic_front(points, acc)
    columns: dict[str, list] = {c: list(points[c]) for c in
                                (*(f"{m}_{s}" for m in INTERVAL_METRICS for s in ("lo", "hi")),
                                 *(f"p_front_{a}" for a, _ in PANELS))}
    comparisons = []
    for group in points["group"].unique(maintain_order=True):
        rows = [i for i, g in enumerate(points["group"]) if g == group]
        found = samples(points[rows])
        if not found:
            continue
        index = {rows[i]: s for i, s in found.items()}
        reps = replicates({str(i): s for i, s in index.items()}, resamples)
        for i, rep in reps.items():
            low, high = interval(rep)
            for m in INTERVAL_METRICS:
                columns[f"{m}_lo"][int(i)], columns[f"{m}_hi"][int(i)] = low[SCORES.index(m)], high[SCORES.index(m)]
        for acc, _ in PANELS:
            odds = front_probability({i: r[:, SCORES.index(acc)] for i, r in reps.items()},
                                     {i: points["cost"][int(i)] for i in reps})
            for i, p in odds.items():
                columns[f"p_front_{acc}"][int(i)] = p
        comparisons += pairs(points, index, reps, group)
    points = points.with_columns(pl.Series(c, v, dtype=pl.Float64) for c, v in columns.items())
    return points.with_columns((pl.col(c) * 100).alias(f"{c}_pct") for c in
                               (*METRICS, *(f"{m}_{s}" for m in INTERVAL_METRICS for s in ("lo", "hi", "std")))), \
        comparisons


def pairs(points: pl.DataFrame, index: dict[int, Sample], reps: dict[str, np.ndarray], group: str) -> list[dict]:
    """Paired differences (A minus B) of every two trained points (not sweep trials) of one group, in label order."""
    trained = sorted((i for i in index if points["kind"][i] == "train"), key=lambda i: points["label"][i])
    out = []
    for a, b in itertools.combinations(trained, 2):
        found = compare(reps[str(a)], reps[str(b)], index[a].point(), index[b].point())
        out.append({"group": group, "a": points["label"][a], "b": points["label"][b],
                    **{m: found[m] for m in ("rank1", "map")}})
    return out


def deterministic_front(points: pl.DataFrame, acc: str) -> pl.DataFrame:
    """Add bool column `pareto_<acc>`: the point estimates' front of max `acc`, min `cost` within each group."""
    # Found on distinct (cost, accuracy) pairs and joined back, so points that tie exactly (neither
    # dominates the other) are all on it, not only the first one sorted.
    front = (points.drop_nulls(["cost", acc]).select("group", "cost", acc).unique()
             .sort(["group", "cost", acc], descending=[False, False, True])
             .filter(pl.col(acc) > pl.col(acc).cum_max().shift(1).over("group").fill_null(-math.inf))
             .with_columns(pl.lit(True).alias(f"pareto_{acc}")))
    return (points.join(front, on=["group", "cost", acc], how="left", maintain_order="left")
            .with_columns(pl.col(f"pareto_{acc}").fill_null(False)))
