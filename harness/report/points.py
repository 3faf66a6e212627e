"""From runs to the points a report shows: one per configuration, over its seeds, with how sure each number is.

A point is every run of one label and configuration (`config_key`) in a group (one test set of a
dataset, `harness.report.testsets`): its scores are the means over its seeds, with the sample std over
seeds, a 95 % variance-components interval over seeds and identity-clustered queries, its P(on the
Pareto front), whether it is surely on the front, and, for every pair of trained presets, the difference
with its p-value (Holm-adjusted over the group's comparisons), minimum detectable difference and seeds
needed (all from `harness.evaluate.statistics.assess` and `compare`). A point lacks them where some of
its runs kept no per-query outcomes (MLflow-only runs, older records); a sweep's trials arrive aggregated
by the sweep, with its own intervals and front odds.
"""

from __future__ import annotations

import itertools

import polars as pl

from harness.evaluate.statistics import (CONFIDENCE, DEFAULT_DRAWS, FRONT_SCORES, SCORES, Sample, compare, holm,
                                         read_sample)
from harness.evaluate.front import Assessment, assess, pareto_front
from harness.report.runs import INTERVAL_METRICS, METRICS, PANELS

KEY = ("group", "label", "config_key")
HARDWARE = ("cpu", "gpu")  # the runs' hardware columns, null where unknown


def aggregate(runs: pl.DataFrame) -> pl.DataFrame:
    """One row per point: seed means of the scores, sample std over seeds, the seeds (their scores and queries
    files in seed_list order) and the hardware they trained on."""
    runs = runs.with_columns(pl.lit(None, pl.String).alias(c) for c in HARDWARE if c not in runs.columns)
    first = [c for c in runs.columns if c not in (*KEY, *METRICS, *HARDWARE, "seed", "seeds", "queries", "train_s",
                                                   "start_time", "run_id", *(f"{m}_std" for m in INTERVAL_METRICS))]
    known = pl.col("cpu").is_not_null() | pl.col("gpu").is_not_null()
    points = runs.group_by(KEY, maintain_order=True).agg(
        *(pl.col(c).first() for c in first),
        *(pl.col(m).mean() for m in METRICS),
        # A sweep's row brings its own std over seeds; a record is one seed, and seeds of a point are its rows.
        *(pl.when(pl.len() > 1).then(pl.col(m).std(ddof=1)).otherwise(pl.col(f"{m}_std").first()).alias(f"{m}_std")
          for m in INTERVAL_METRICS),
        *(pl.col(m).alias(f"{m}_per_seed") for m in ("rank1", "map")),
        pl.col("seeds").sum(), pl.col("seed").alias("seed_list"), pl.col("queries").alias("query_files"),
        pl.col("train_s").sum(),
        # Every seed's MLflow run, in seed order: a point is all of them, not its first seed's.
        pl.col("run_id").sort_by("seed").str.join(" ").replace("", None).alias("run_id"),
        pl.col("start_time").max(),
        *(pl.col(c).drop_nulls().unique(maintain_order=True).alias(f"_{c}s") for c in HARDWARE),
        pl.struct(*HARDWARE).filter(known).n_unique().alias("_machines"),
    )
    return points.with_columns(
        # A sweep's row is the mean of its seeds, not one seed's score.
        *(pl.when(pl.col(f"{m}_per_seed").list.len() == pl.col("seeds")).then(f"{m}_per_seed").alias(f"{m}_per_seed")
          for m in ("rank1", "map")),
        pl.concat_list("_cpus", "_gpus").list.join(" + ").replace("", None).alias("hardware"),
        (pl.col("_machines") > 1).alias("pooled_hardware"),
        (pl.col("seeds") > 1).fill_null(False).alias("seed_measured"),
    ).drop("_cpus", "_gpus", "_machines")


def samples(points: pl.DataFrame) -> dict[int, Sample]:
    """The per-query values of each point (row index) whose every run kept them, on its primary protocol, seeds in
    ascending order; sweep trials come aggregated, and points without a cost cannot be placed."""
    out = {}
    for i, row in enumerate(points.iter_rows(named=True)):
        files, seeds = row["query_files"], row["seed_list"]
        if row["kind"] == "trial" or row["cost"] is None or not files or None in files or None in seeds:
            continue
        # One group is one test set (harness.report.testsets), so its points' queries pair up.
        out[i] = read_sample(list(zip(seeds, files)), row["protocol"], row["preset"])
    return out


def placed(points: pl.DataFrame, rows: list[int]) -> dict[int, float]:
    """The cost of each of `rows` that can be placed on the fronts: it has a cost and both panels' accuracy."""
    return {i: points["cost"][i] for i in rows
            if points["cost"][i] is not None and all(points[acc][i] is not None for acc, _ in PANELS)}


def assess_points(runs: pl.DataFrame, draws: int = DEFAULT_DRAWS) -> tuple[pl.DataFrame, list[dict]]:
    """The points of `runs` with their intervals, P(front) and sure-front per panel, accuracy in percent
    (`<metric>_pct`), and the paired comparisons of every two trained points of a group."""
    points = aggregate(runs)
    points = points.with_columns(pareto_front(points, acc, "cost", "group").alias(f"pareto_{acc}") for acc, _ in PANELS)
    columns: dict[str, list] = {c: list(points[c]) for c in
                                (*(f"{m}_{s}" for m in INTERVAL_METRICS for s in ("lo", "hi")),
                                 *(f"p_front_{a}" for a, _ in PANELS))}
    columns |= {f"sure_{a}": list(points[f"sure_{a}"]) if f"sure_{a}" in points.columns else [False] * points.height
                for a, _ in PANELS}
    comparisons = []
    for group in points["group"].unique(maintain_order=True):
        rows = [i for i, g in enumerate(points["group"]) if g == group]
        index = {rows[i]: s for i, s in samples(points[rows]).items()}
        if not index:
            continue
        for i, found in assess(index, placed(points, rows), draws).items():
            fill(columns, i, found)
        comparisons += pairs(points, index, group)
    points = points.with_columns(pl.Series(c, v, dtype=pl.Boolean if c.startswith("sure_") else pl.Float64)
                                 for c, v in columns.items())
    return points.with_columns((pl.col(c) * 100).alias(f"{c}_pct") for c in
                               (*METRICS, *(f"{m}_{s}" for m in INTERVAL_METRICS for s in ("lo", "hi", "std")))), \
        comparisons


def fill(columns: dict[str, list], row: int, found: Assessment) -> None:
    """Write one point's interval bounds, P(front) and sure-front into the report's columns."""
    for m in INTERVAL_METRICS:
        columns[f"{m}_lo"][row], columns[f"{m}_hi"][row] = (float(found.lo[SCORES.index(m)]),
                                                            float(found.hi[SCORES.index(m)]))
    for acc, _ in PANELS:
        columns[f"p_front_{acc}"][row], columns[f"sure_{acc}"][row] = found.p_front[acc], found.sure[acc]


def pairs(points: pl.DataFrame, index: dict[int, Sample], group: str) -> list[dict]:
    """Differences (A minus B) of every two trained points (not sweep trials) of one group, in label order, with
    Holm's adjustment over the group's family: every pair x rank-1 and mAP."""
    trained = sorted((i for i in index if points["kind"][i] == "train"), key=lambda i: points["label"][i])
    found = [(a, b, compare(index[a], index[b], FRONT_SCORES)) for a, b in itertools.combinations(trained, 2)]
    adjusted = iter(holm([c[m]["p"] for _, _, c in found for m in FRONT_SCORES]).tolist())
    out = []
    for a, b, c in found:
        entry = {"group": group, "a": points["label"][a], "b": points["label"][b], "pairing": c["pairing"],
                 "family": len(found) * len(FRONT_SCORES)}
        for m in FRONT_SCORES:
            p = next(adjusted)
            entry[m] = c[m] | {"p_holm": p, "decided_holm": p < 1 - CONFIDENCE}
        out.append(entry)
    return out
