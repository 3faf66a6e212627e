"""Per-query outcomes as a table: what every score of a run is a mean of, kept beside its run record.

One row per (protocol, query): `query` is the query's index in the test set's query list (the
order of the prepared dataset's query rows), so two runs on the same prepared data pair up row by
row. `first_rank` and `last_rank` are 1-based ranks of the first and last good match after junk
removal (null without a good match), `matches` the good matches in the gallery, `ap` the average
precision under the protocol's rule (null without a good match). rank-k is the mean of
`first_rank <= k`, mAP the mean of `ap`, mINP the mean of `matches / last_rank`, over the rows with
a match (`harness.evaluate.metrics.scores_from_outcomes`).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import polars as pl

from harness import storage
from harness.cli import UserError
from harness.evaluate.metrics import QueryOutcomes, Scores

SCHEMA = {"protocol": pl.String, "query": pl.Int32, "tracklet": pl.String, "pid": pl.Int64, "camera": pl.Int64,
          "first_rank": pl.Int64, "last_rank": pl.Int64, "matches": pl.Int64, "ap": pl.Float64}
SUFFIX = ".queries.parquet"


def queries_path(record: str | Path) -> str:
    """Where the per-query outcomes of the run record at `record` (x.json) live: x.queries.parquet beside it."""
    base, sep, query = str(record).partition("?")
    return base.removesuffix(".json") + SUFFIX + (sep + query if sep else "")


def outcomes_table(outcomes: dict[str, QueryOutcomes], rows: pl.DataFrame) -> pl.DataFrame:
    """The per-query table of each protocol's `outcomes`; `rows` is the test set (its query rows in order)."""
    queries = rows.filter(pl.col("is_query"))
    frames = []
    for protocol, found in outcomes.items():
        if len(found.matches) != queries.height:
            raise ValueError(f"{protocol}: {len(found.matches)} outcomes for {queries.height} queries")
        frame = pl.DataFrame({
            "protocol": protocol, "query": np.arange(queries.height, dtype=np.int32),
            "tracklet": queries["tracklet"], "pid": queries["pid"], "camera": queries["camera"],
            "first_rank": found.first_rank, "last_rank": found.last_rank, "matches": found.matches, "ap": found.ap,
        }, schema=SCHEMA)
        matched = pl.col("matches") > 0
        frames.append(frame.with_columns(pl.when(matched).then(pl.col(c)).alias(c) for c in ("first_rank", "last_rank", "ap")))
    return pl.concat(frames) if frames else pl.DataFrame(schema=SCHEMA)


def scores_table(scores: dict[str, Scores], rows: pl.DataFrame) -> pl.DataFrame:
    """The per-query table of `score_features`' result on the test set `rows`."""
    return outcomes_table({protocol: s.outcomes for protocol, s in scores.items()}, rows)


def outcomes_of(table: pl.DataFrame, protocol: str) -> QueryOutcomes:
    """One protocol's outcomes back from the table, in query order."""
    rows = table.filter(pl.col("protocol") == protocol).sort("query")
    return QueryOutcomes(rows["first_rank"].fill_null(0).to_numpy(), rows["last_rank"].fill_null(0).to_numpy(),
                         rows["matches"].to_numpy(), rows["ap"].fill_null(np.nan).to_numpy())


def to_bytes(table: pl.DataFrame) -> bytes:
    """The table as parquet bytes."""
    buffer = io.BytesIO()
    table.write_parquet(buffer)
    return buffer.getvalue()


def write_queries(location: str | Path, table: pl.DataFrame) -> None:
    """Write the per-query table to `location` (a file or a URI) whole, never half."""
    storage.write_bytes(location, to_bytes(table))


def read_queries(location: str | Path) -> pl.DataFrame:
    """The per-query table at `location`; UserError naming it when it is missing or not one."""
    fix = "rerun the training that wrote the run record beside it (it writes both)"
    try:
        table = pl.read_parquet(io.BytesIO(storage.read_bytes(location)))
    except FileNotFoundError:
        raise UserError(f"per-query outcomes {location} do not exist; {fix}") from None
    except (OSError, pl.exceptions.PolarsError) as e:
        raise UserError(f"per-query outcomes {location} are not a parquet table ({type(e).__name__}); {fix}") from None
    wrong = {k: str(table.schema.get(k)) for k, kind in SCHEMA.items() if table.schema.get(k) != kind}
    if wrong:
        raise UserError(f"per-query outcomes {location} have missing or mistyped columns {wrong} (expected "
                        f"{ {k: str(v) for k, v in SCHEMA.items()} }); {fix}")
    return table
