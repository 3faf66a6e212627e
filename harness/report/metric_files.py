"""The report's metrics as JSON: metrics.json (every point), comparisons.json (every paired comparison) and metrics/,
one small file per point, which DVC reads as the pipeline's metrics.

`dvc metrics show` prints one row per metrics file and one column per key: a file per point with a few short keys
reads as a results table (a row per preset), where one nested file made a single row of every point's every number.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import polars as pl

from harness.errors import UserError
from harness.io import write_json_atomic


def metrics(points: pl.DataFrame) -> dict:
    """metrics.json: per dataset group, each point's mean rank-1 and mAP (percent) with their 95 % intervals and seed
    std, its seeds, GMACs and latency."""
    out: dict = {}
    for r in points.sort(["group", "label"]).iter_rows(named=True):
        entry = {"seeds": r["seeds"]}
        for m in ("rank1", "map"):
            entry |= {f"{m}_pct": r[f"{m}_pct"], f"{m}_lo": r[f"{m}_lo_pct"], f"{m}_hi": r[f"{m}_hi_pct"],
                      f"{m}_std": r[f"{m}_std_pct"]}
        out.setdefault(r["group"], {})[r["label"]] = entry | {"gmacs": r["gmacs"], "latency_ms": r["latency_ms"]}
    return out


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


COMPARISON_UNITS = {
    "diff, lo, hi": "A - B and its 95 % interval, points of percent",
    "decided": "the 95 % interval excludes 0 (per comparison, no family-wise control)",
    "p, p_holm": "two-sided p, and Holm-adjusted over the group's family of `family` comparisons",
    "p_improve": "P(a run of A scores higher than a run of B) + 1/2 P(tie), over every pair of their runs",
    "mdd": "minimum detectable paired difference at 80 % power, two-sided 5 %, points of percent",
    "seeds_needed": "seeds per point for 80 % power at the observed difference; null: the test set's noise prevents it",
}
_PERCENT = ("diff", "lo", "hi", "mdd")  # fractions in the comparisons, points of percent in the file
_ODDS = ("p", "p_holm", "p_improve")


def _comparison(found: dict) -> dict:
    """One metric of a comparison for comparisons.json: differences in points of percent, rounded like the metrics
    files so `dvc metrics diff` shows changed results, not changed float bits; the rest as found."""
    return {k: _round(100 * v, 2) if k in _PERCENT else _round(v, 4) if k in _ODDS else v for k, v in found.items()}


def comparison_metrics(comparisons: list[dict]) -> dict:
    """comparisons.json: the units, then per dataset group and pair 'A - B' its pairing, family size and, per metric,
    the difference with its interval, p values, probability of improvement, MDD and seeds needed."""
    groups: dict = {}
    for c in comparisons:
        groups.setdefault(c["group"], {})[f"{c['a']} - {c['b']}"] = {
            "pairing": c["pairing"], "family": c["family"], **{m: _comparison(c[m]) for m in ("rank1", "map")}}
    return {"units": COMPARISON_UNITS, "groups": groups}


def point_metrics(point: dict) -> dict:
    """One point's DVC metrics, a short row of `dvc metrics show`: rank-1 and mAP (percent) with their 95 % interval,
    GMACs per clip and seeds (latency stays in metrics.json); rounded, so `dvc metrics diff` shows changes of the
    results, not of the last float bits."""
    out = {}
    for m in ("rank1", "map"):
        out |= {m: _round(point[f"{m}_pct"], 2), f"{m}_lo": _round(point[f"{m}_lo_pct"], 2),
                f"{m}_hi": _round(point[f"{m}_hi_pct"], 2)}
    gmacs = None if point["gmacs"] is None else float(f"{point['gmacs']:.4g}")
    return out | {"gmacs": gmacs, "seeds": point["seeds"]}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def point_file_names(points: pl.DataFrame) -> list[str]:
    """Each point's file under metrics/, in row order: `<label>.json`; in a folder per group where the report has
    several (datasets, test sets or devices never share a row); with its configuration's key where a label has
    several configurations in one group."""
    several_groups = points["group"].n_unique() > 1
    repeated = points.select(pl.len().over("group", "label") > 1).to_series().to_list()
    names = []
    for r, again in zip(points.iter_rows(named=True), repeated):
        stem = _slug(r["label"]) + (f"-{r['config_key'][:8]}" if again else "")
        names.append(f"{_slug(r['group'])}/{stem}.json" if several_groups else f"{stem}.json")
    clashing = sorted({n for n in names if names.count(n) > 1})
    if clashing:
        raise UserError(f"points would share the metrics files {clashing}: their labels differ only in characters "
                        f"a file name cannot hold; give them distinct labels")
    return names


def write_point_metrics(folder: Path, points: pl.DataFrame) -> None:
    """Replace `folder` with one metrics file per point, so no file of a point gone from the report stays behind."""
    staging = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, point in zip(point_file_names(points), points.iter_rows(named=True)):
        write_json_atomic(staging / name, point_metrics(point))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
