"""The report's metrics as JSON: metrics.json (every point and paired comparison) and metrics/, one small file per
point, which DVC reads as the pipeline's metrics.

`dvc metrics show` prints one row per metrics file and one column per key: a file per point with a few short keys
reads as a results table (a row per preset), where one nested file made a single row of every point's every number.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import polars as pl

from harness.cli import UserError
from harness.io import write_json_atomic


def metrics(points: pl.DataFrame, comparisons: list[dict] = ()) -> dict:
    """metrics.json: per dataset group, each point's mean rank-1 and mAP (percent) with their 95 % intervals and seed
    std, its seeds, GMACs and latency; then the paired comparisons (points of percent)."""
    out: dict = {}
    for r in points.sort(["group", "label"]).iter_rows(named=True):
        entry = {"seeds": r["seeds"]}
        for m in ("rank1", "map"):
            entry |= {f"{m}_pct": r[f"{m}_pct"], f"{m}_lo": r[f"{m}_lo_pct"], f"{m}_hi": r[f"{m}_hi_pct"],
                      f"{m}_std": r[f"{m}_std_pct"]}
        out.setdefault(r["group"], {})[r["label"]] = entry | {"gmacs": r["gmacs"], "latency_ms": r["latency_ms"]}
    for c in comparisons:
        out.setdefault("comparisons", {}).setdefault(c["group"], {})[f"{c['a']} - {c['b']}"] = {
            f"{m}_{k}": (100 * c[m][k] if k in ("diff", "lo", "hi") else c[m][k])
            for m in ("rank1", "map") for k in ("diff", "lo", "hi", "p_a")}
    return out


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def point_metrics(point: dict) -> dict:
    """One point's DVC metrics: rank-1 and mAP (percent) with their 95 % interval, GMACs per clip, latency (ms per
    clip) and seeds; rounded, so `dvc metrics diff` shows changes of the results, not of the last float bits."""
    out = {}
    for m in ("rank1", "map"):
        out |= {m: _round(point[f"{m}_pct"], 2), f"{m}_lo": _round(point[f"{m}_lo_pct"], 2),
                f"{m}_hi": _round(point[f"{m}_hi_pct"], 2)}
    gmacs = None if point["gmacs"] is None else float(f"{point['gmacs']:.4g}")
    return out | {"gmacs": gmacs, "latency_ms": _round(point["latency_ms"], 2), "seeds": point["seeds"]}


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
