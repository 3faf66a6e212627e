"""The report's tables, as rows of text cells for benchmark.md and the HTML page, and benchmark.md itself."""

from __future__ import annotations

import math

import polars as pl

from harness.config import PAPER_INPUT
from harness.report.runs import AXIS_NAMES, PANELS
from harness.report.testsets import notes


def fmt(value, spec: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def latency_text(run: dict) -> str:
    """Median latency in ms, with 'noisy' when its range or the competing load was too wide to trust."""
    return fmt(run["latency_ms"], ".1f") + (" noisy" if run.get("latency_noisy") else "")



COLUMNS = ("Pareto", "point", "dataset", "kind", "seeds", "input", "params (M)", "GMACs", "GMACs/tracklet",
           "test sampler", "latency (ms)", "latency on", "rank-1 [95 % interval]", "± seeds", "P(front) rank-1",
           "mAP [95 % interval]", "± seeds", "P(front) mAP", "mINP", "rank-5", "rank-10", "rank-20", "MLflow run",
           "git commit")


def _short_commit(commit: str | None) -> str:
    commit = commit or "–"
    return commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")


def interval_text(point: dict, metric: str) -> str:
    """'26.0 [22.9, 29.2]': the point's mean (percent) and its 95 % interval, or the mean alone without one."""
    mean, low, high = point[f"{metric}_pct"], point[f"{metric}_lo_pct"], point[f"{metric}_hi_pct"]
    return fmt(mean, ".1f") + ("" if low is None else f" [{low:.1f}, {high:.1f}]")


def plus_minus(point: dict, metric: str) -> str:
    """'26.0 ± 3.1': the mean and half the width of its 95 % interval (percent), or the mean alone without one."""
    mean, low, high = point[f"{metric}_pct"], point[f"{metric}_lo_pct"], point[f"{metric}_hi_pct"]
    return fmt(mean, ".1f") + ("" if low is None else f" ± {(high - low) / 2:.1f}")


def table_rows(points: pl.DataFrame) -> list[list[str]]:
    """One row of COLUMNS per point (a configuration over its seeds), accuracy in percent."""
    rows = []
    for r in points.iter_rows(named=True):
        front = ", ".join(n.split()[0] for acc, n in PANELS if r[f"pareto_{acc}"])
        rows.append([f"★ {front}" if front else "", r["label"], r["group"], r["kind"], str(r["seeds"]),
                     r["input"] or "–", fmt(r["params_m"], ".2f"), fmt(r["gmacs"], ".3g"),
                     fmt(r["gmacs_tracklet"], ".3g"), r["eval_sampler"] or "–", latency_text(r),
                     r["latency_device"] or "–",
                     interval_text(r, "rank1"), fmt(r["rank1_std_pct"], ".1f"), fmt(r["p_front_rank1"], ".2f"),
                     interval_text(r, "map"), fmt(r["map_std_pct"], ".1f"), fmt(r["p_front_map"], ".2f"),
                     *(fmt(r[f"{m}_pct"], ".1f") for m in ("minp", "rank5", "rank10", "rank20")),
                     r["run_id"] or "–", _short_commit(r["git_commit"])])
    return rows


COMPARISON_HEAD = ["A", "B", "rank-1 A − B [95 % interval]", "P(A > B) / tie / P(B > A)", "mAP A − B [95 % interval]",
                   "P(A > B) / tie / P(B > A)", "decided"]


def comparison_rows(comparisons: list[dict]) -> list[list[str]]:
    """One row per paired comparison: differences in points of percent, their paired intervals and odds."""
    def cells(c: dict) -> list[str]:
        return [f"{100 * c['diff']:+.1f} [{100 * c['lo']:+.1f}, {100 * c['hi']:+.1f}]",
                f"{c['p_a']:.2f} / {c['p_tie']:.2f} / {c['p_b']:.2f}"]

    rows = []
    for c in comparisons:
        decided = [name for name, key in (("rank-1", "rank1"), ("mAP", "map")) if c[key]["decided"]]
        rows.append([c["a"], c["b"], *cells(c["rank1"]), *cells(c["map"]),
                     ", ".join(decided) if decided else "not decided"])
    return rows


def decided_text(c: dict, key: str, name: str) -> str:
    """'nvan beats baseline on mAP by 2.1 points [0.4, 3.8]', for a decided comparison."""
    found = c[key]
    winner, loser, sign = (c["a"], c["b"], 1) if found["diff"] > 0 else (c["b"], c["a"], -1)
    return (f"{winner} beats {loser} on {name} by {100 * sign * found['diff']:.1f} points "
            f"[{100 * min(sign * found['lo'], sign * found['hi']):.1f}, {100 * max(sign * found['lo'], sign * found['hi']):.1f}]")


def intro(axis: str) -> list[tuple[str, str]]:
    """What the tables and the figure show, as (term, meaning) items: a point, its interval, P(front), the front,
    the units of cost and where latency comes from."""
    return [
        ("Point", "one configuration; its accuracy (percent, best checkpoint, primary protocol) is the mean over its "
                  "seeds."),
        ("Interval", "95 %, from a two-way bootstrap that resamples both the seeds and the queries; ± seeds: the "
                     "sample std over seeds."),
        ("P(front)", "the share of bootstrap replicates in which no other point dominates it; ★ marks the front of "
                     "the point estimates, which only P(front) >= 0.95 makes sure."),
        ("Front", f"max accuracy, min {AXIS_NAMES[axis]}, within each "
                  f"{'dataset and device' if axis == 'latency' else 'dataset'}."),
        ("GMACs", "1e9 multiply-accumulates (not FLOPs) per clip at the run's input, T x H x W."),
        ("GMACs/tracklet", "per test tracklet, mean over the test set, under the run's test sampler (dense runs "
                           "ceil(F / T) clips of a tracklet of F frames, the others one)."),
        ("Latency", "median ms per batch of 1 clip of the BN-folded model that evaluation runs, timed with one "
                    "training worker's resources on the device in 'latency on'; noisy when its range exceeds 25 % of "
                    "the median or other work used more than a quarter of a core meanwhile."),
    ]


COMPARISON_INTRO = ("Every two trained points of a dataset, paired: the same query draw (and seed draw, where their "
                    "seeds are the same) for both, so what the two share cancels. A difference is decided when its "
                    "95 % interval excludes 0; otherwise the data does not rank them.")


def published_rows(published: pl.DataFrame) -> list[list[str]]:
    """One row of PUBLISHED_HEAD per paper result."""
    return [[r["name"], f"{r['rank1_pct']:.1f}", f"{r['map_pct']:.1f}", f"{r['gmacs']:.2f}"]
            for r in published.iter_rows(named=True)]


PUBLISHED_HEAD = ["published model", "rank-1", "mAP", f"GMACs at {PAPER_INPUT.label()} (ours)"]


COST_HEAD = ["preset", "input T×H×W", "width", "params (M)", "GMACs", "batch", "latency (ms)", "range (ms)",
             "threads", "device", "peak memory (MiB)"]



def cost_rows(records: list[dict]) -> list[list[str]]:
    """One row of COST_HEAD per cost record; latency and peak memory are per batch."""
    rows = []
    for r in records:
        lat = r.get("latency") or {}
        median = None if not lat else 1e3 * lat["median_s"]
        span = f"{1e3 * lat['min_s']:.1f}-{1e3 * lat['max_s']:.1f}" if lat else "–"
        rows.append([r["name"], r["input"], str(r["model_width"]), f"{r['params'] / 1e6:.2f}", f"{r['gmacs']:.3g}",
                     str(r.get("batch", "–")), fmt(median, ".1f") + (" noisy" if lat.get("noisy") else ""), span,
                     str(lat.get("threads", "–")), lat.get("device", "–"), fmt(r.get("peak_memory_mb"), ".1f")])
    return rows


COST_INTRO = ("Every preset at the paper's input and width and as this benchmark trains it, from "
              "`python -m harness.cost`: GMACs per clip; latency (median and range of the timed runs) and peak "
              "memory per batch of the BN-folded model that evaluation runs, measured on the device named, on "
              "the machine that ran the cost stage.")


def markdown(points: pl.DataFrame, published: pl.DataFrame | None, source: str,
             costs: list[dict] | None = None, axis: str = "gmacs", comparisons: list[dict] = ()) -> str:
    """benchmark.md: an intro, one table per dataset group and its paired comparisons, the cost table and the
    paper's numbers."""
    def table(head: list[str], rows: list[list[str]]) -> list[str]:
        cells = [head, ["---"] * len(head), *rows]
        return ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]

    lines = ["# nvan-bench benchmark", "", f"Runs of {source}.", "",
             *(f"- **{term}**: {meaning}" for term, meaning in intro(axis)), ""]
    not_compared = notes(points)
    if not_compared:
        lines += [*(f"- {n}" for n in not_compared), ""]
    for group in points["group"].unique(maintain_order=True):
        lines += [f"## {group}", "", *table(list(COLUMNS), table_rows(points.filter(pl.col("group") == group))), ""]
        pairs = [c for c in comparisons if c["group"] == group]
        if pairs:
            lines += [f"### Paired comparisons, {group}", "", COMPARISON_INTRO, "",
                      *table(COMPARISON_HEAD, comparison_rows(pairs)), ""]
    if costs:
        lines += ["## Cost of each preset", "", COST_INTRO, "", *table(COST_HEAD, cost_rows(costs)), ""]
    if published is not None:
        lines += ["## Published reference (real MARS, Liu et al. BMVC 2019)", "",
                  *table(PUBLISHED_HEAD, published_rows(published)), ""]
    return "\n".join(lines)
