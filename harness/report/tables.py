"""The report's tables: benchmark.md, the HTML page around the figure, and DVC's metrics.json."""

from __future__ import annotations

import html
import math

import polars as pl

from harness.config import PAPER_INPUT
from harness.report.runs import AXIS_NAMES, METRICS, PANELS


def fmt(value, spec: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def latency_text(run: dict) -> str:
    """Median latency in ms, with 'noisy' when its range or the competing load was too wide to trust."""
    return fmt(run["latency_ms"], ".1f") + (" noisy" if run.get("latency_noisy") else "")



COLUMNS = ("Pareto", "run", "dataset", "kind", "status", "input", "params (M)", "GMACs", "GMACs/tracklet",
           "test sampler", "latency (ms)", "latency on", "rank-1", "rank-5", "rank-10", "rank-20", "mAP", "mINP", "MLflow run", "git commit")


def _short_commit(commit: str | None) -> str:
    commit = commit or "–"
    return commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")


def table_rows(points: pl.DataFrame) -> list[list[str]]:
    """One row of COLUMNS per run, accuracy in percent, Pareto membership spelled out."""
    rows = []
    for r in points.iter_rows(named=True):
        front = ", ".join(n.split()[0] for acc, n in PANELS if r[f"pareto_{acc}"])
        rows.append([f"★ {front}" if front else "", r["label"], r["group"], r["kind"], r["status"],
                     r["input"] or "–", fmt(r["params_m"], ".2f"), fmt(r["gmacs"], ".3g"),
                     fmt(r["gmacs_tracklet"], ".3g"), r["eval_sampler"] or "–", latency_text(r),
                     r["latency_device"] or "–", *(fmt(r[f"{m}_pct"], ".1f") for m in METRICS),
                     r["run_id"], _short_commit(r["git_commit"])])
    return rows


def intro(axis: str) -> str:
    """The paragraph above the tables: units, where latency comes from, what the Pareto front minimises."""
    return ("Accuracy (percent) at each run's best checkpoint on its primary protocol; GMACs = 1e9 "
            "multiply-accumulates (not FLOPs) per clip at the run's input, T x H x W; GMACs/tracklet: per test "
            "tracklet, mean over the test set, under the run's test sampler (dense runs ceil(F / T) clips of a "
            "tracklet of F frames, the others one); latency: median ms per batch of 1 clip of the BN-folded "
            "model that evaluation runs, timed with one training worker's resources on the device in 'latency "
            "on', marked noisy when its range exceeds 25 % of the median or other work used more than a quarter "
            f"of a core meanwhile. ★ marks runs on the Pareto front (max accuracy, min {AXIS_NAMES[axis]}) of "
            f"their {'dataset and device' if axis == 'latency' else 'dataset'}.")


def _published_rows(published: pl.DataFrame) -> list[list[str]]:
    return [[r["name"], f"{r['rank1_pct']:.1f}", f"{r['map_pct']:.1f}", f"{r['gmacs']:.2f}"]
            for r in published.iter_rows(named=True)]


_PUBLISHED_HEAD = ["published model", "rank-1", "mAP", f"GMACs at {PAPER_INPUT.label()} (ours)"]


_COST_HEAD = ["preset", "input T×H×W", "width", "params (M)", "GMACs", "batch", "latency (ms)", "range (ms)",
              "threads", "device", "peak memory (MiB)"]



def cost_rows(records: list[dict]) -> list[list[str]]:
    """One row of _COST_HEAD per cost record; latency and peak memory are per batch."""
    rows = []
    for r in records:
        lat = r.get("latency") or {}
        median = None if not lat else 1e3 * lat["median_s"]
        span = f"{1e3 * lat['min_s']:.1f}-{1e3 * lat['max_s']:.1f}" if lat else "–"
        rows.append([r["name"], r["input"], str(r["model_width"]), f"{r['params'] / 1e6:.2f}", f"{r['gmacs']:.3g}",
                     str(r.get("batch", "–")), fmt(median, ".1f") + (" noisy" if lat.get("noisy") else ""), span,
                     str(lat.get("threads", "–")), lat.get("device", "–"), fmt(r.get("peak_memory_mb"), ".1f")])
    return rows


_COST_INTRO = ("Every preset at the paper's input and width and as this benchmark trains it, from "
               "`python -m harness.cost`: GMACs per clip; latency (median and range of the timed runs) and peak "
               "memory per batch of the BN-folded model that evaluation runs, measured on the device named, on "
               "the machine that ran the cost stage.")


def markdown(points: pl.DataFrame, published: pl.DataFrame | None, source: str,
             costs: list[dict] | None = None, axis: str = "gmacs") -> str:
    """benchmark.md: an intro, one table per dataset group, the cost table and the paper's numbers."""
    def table(head: list[str], rows: list[list[str]]) -> list[str]:
        cells = [head, ["---"] * len(head), *rows]
        return ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]

    lines = ["# nvan-bench benchmark", "", f"Runs of {source}. {intro(axis)}", ""]
    for group in points["group"].unique(maintain_order=True):
        lines += [f"## {group}", "", *table(list(COLUMNS), table_rows(points.filter(pl.col("group") == group))), ""]
    if costs:
        lines += ["## Cost of each preset", "", _COST_INTRO, "", *table(_COST_HEAD, cost_rows(costs)), ""]
    if published is not None:
        lines += ["## Published reference (real MARS, Liu et al. BMVC 2019)", "",
                  *table(_PUBLISHED_HEAD, _published_rows(published)), ""]
    return "\n".join(lines)


def html_page(svg: str, points: pl.DataFrame, published: pl.DataFrame | None, source: str,
              costs: list[dict] | None = None, axis: str = "gmacs") -> str:
    """pareto.html: the figure with hover tooltips and the tables, inline and offline."""
    def table(head: list[str], rows: list[list[str]]) -> str:
        cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
        return f"<table><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr>{cells}</table>"

    parts = [f"<h2>{html.escape(g)}</h2>" + table(list(COLUMNS), table_rows(points.filter(pl.col("group") == g)))
             for g in points["group"].unique(maintain_order=True)]
    if costs:
        parts.append(f"<h2>Cost of each preset</h2><p>{html.escape(_COST_INTRO)}</p>"
                     + table(_COST_HEAD, cost_rows(costs)))
    if published is not None:
        parts.append("<h2>Published reference (real MARS)</h2>" + table(_PUBLISHED_HEAD, _published_rows(published)))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>nvan-bench: accuracy vs cost</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
svg {{ max-width: 100%; height: auto; }}
.point {{ cursor: help; }}
.point:hover {{ filter: drop-shadow(0 0 3px crimson); }}
table {{ border-collapse: collapse; font-size: 0.85em; }}
td, th {{ border: 1px solid #ccc; padding: 2px 6px; text-align: right; }}
</style></head><body>
<h1>nvan-bench: accuracy vs cost</h1>
<p>Runs of {html.escape(source)}. {html.escape(intro(axis))} Hover a point for its run's config and metrics.</p>
{svg}
{"".join(parts)}
</body></html>
"""


def metrics(points: pl.DataFrame) -> dict:
    """DVC metrics: per dataset group, the newest run of each label (accuracy in percent)."""
    out: dict = {}
    newest = points.sort("start_time").unique(["group", "label"], keep="last").sort(["group", "label"])
    for r in newest.iter_rows(named=True):
        out.setdefault(r["group"], {})[r["label"]] = {
            "rank1_pct": r["rank1_pct"], "map_pct": r["map_pct"], "minp_pct": r["minp_pct"],
            "gmacs": r["gmacs"], "gmacs_per_tracklet": r["gmacs_tracklet"], "params_m": r["params_m"],
            "latency_ms": r["latency_ms"], "latency_noisy": r["latency_noisy"],
        }
    return out
