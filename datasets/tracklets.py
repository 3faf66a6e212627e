"""The tracklet table every reader returns: one row per tracklet, frames as paths relative to the root."""

from __future__ import annotations

import polars as pl

from datasets.errors import DatasetError

SPLITS = ("train", "test")

# Columns a reader produces; prepare adds `frame_offset` (first frame's row in the frame store).
SCHEMA = {
    "split": pl.String,
    "pid": pl.Int64,
    "camera": pl.Int64,
    "tracklet": pl.String,
    "num_frames": pl.Int64,
    "is_query": pl.Boolean,
    "is_junk": pl.Boolean,
    "is_distractor": pl.Boolean,
    "frames": pl.List(pl.String),
}


def tracklet_table(
    split: list[str], pid: list[int], camera: list[int], tracklet: list[str],
    is_query: list[bool], frames: list[list[str]],
) -> pl.DataFrame:
    """The tracklet table from per-row columns; junk is pid -1 and distractor pid 0 (MARS's convention)."""
    return pl.DataFrame(
        {"split": split, "pid": pid, "camera": camera, "tracklet": tracklet, "is_query": is_query, "frames": frames},
        schema={k: SCHEMA[k] for k in ("split", "pid", "camera", "tracklet", "is_query", "frames")},
    ).select(
        "split", "pid", "camera", "tracklet",
        pl.col("frames").list.len().cast(pl.Int64).alias("num_frames"),
        "is_query",
        (pl.col("pid") == -1).alias("is_junk"),
        (pl.col("pid") == 0).alias("is_distractor"),
        "frames",
    )


def require_splits(table: pl.DataFrame, where: str, fix: str) -> None:
    """Raise DatasetError unless train, test and the queries each hold at least one tracklet."""
    counts = {s: table.filter(pl.col("split") == s).height for s in SPLITS}
    counts["query"] = int(table["is_query"].sum())
    empty = [name for name, n in counts.items() if n == 0]
    if empty:
        raise DatasetError(
            f"{where}: the {' and '.join(empty)} split{'s are' if len(empty) > 1 else ' is'} empty "
            f"(tracklets per split: {counts}); {fix}"
        )
