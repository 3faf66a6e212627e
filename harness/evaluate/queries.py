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
from harness.errors import UserError
from harness.echo import echo
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


def fix_hint(preset: str | None = None) -> str:
    """How to replace a bad per-query file: rewrite it from the run that wrote it, never by hand."""
    return (f"rerun the training that wrote it and the run record beside it (`dvc repro -f train@{preset or '<preset>'}`)"
            f" or rescore that run's checkpoint into a new file (`python -m harness.evaluate --checkpoint CHECKPOINT "
            f"--queries NEW{SUFFIX}`)")


def read_queries(location: str | Path, preset: str | None = None) -> pl.DataFrame:
    """The per-query table at `location`, checked column by column; UserError naming it, the column, what it holds and
    how to rewrite it (the training of `preset`) when it is missing, not one, or holds values no evaluation writes."""
    fix = fix_hint(preset)
    try:
        table = pl.read_parquet(io.BytesIO(storage.read_bytes(location)))
    except FileNotFoundError:
        raise UserError(f"per-query outcomes {location} do not exist; {fix}") from None
    except (OSError, pl.exceptions.PolarsError) as e:
        raise UserError(f"per-query outcomes {location} are not a parquet table ({type(e).__name__}); {fix}") from None
    wrong = {k: str(table.schema.get(k, "missing")) for k, kind in SCHEMA.items() if table.schema.get(k) != kind}
    if wrong:
        raise UserError(f"per-query outcomes {location} have missing or mistyped columns {wrong} (expected "
                        f"{ {k: str(v) for k, v in SCHEMA.items()} }); {fix}")
    problem = _problem(table)
    if problem:
        raise UserError(f"per-query outcomes {location}: {problem}; {fix}")
    return table


def _found(values: pl.Series) -> str:
    """A bounded echo of the offending values of a column."""
    return f"{len(values)} bad value(s), e.g. {echo(values.head(3).to_list())}"


def _problem(table: pl.DataFrame) -> str | None:
    """The first value in a well-typed per-query table that no evaluation writes (its column, what was found and what
    was expected), or None. Scores average these values, so one NaN or a repeated query index would pass unseen."""
    if table.is_empty():
        return "the table has no rows; expected one row per protocol and query"
    for column in ("protocol", "query", "tracklet", "matches"):
        if table[column].null_count():
            return f"column '{column}' has {table[column].null_count()} empty value(s); expected a value in every row"
    if (table["matches"] < 0).any():
        return f"column 'matches' holds {_found(table.filter(pl.col('matches') < 0)['matches'])}; expected counts >= 0"
    lists = {}
    for (protocol,), rows in table.partition_by("protocol", maintain_order=True, as_dict=True).items():
        index, n = rows["query"], rows.height
        if index.n_unique() != n or index.min() < 0 or index.max() >= n:
            return (f"column 'query' of protocol {protocol!r} holds {index.n_unique()} distinct indices from "
                    f"{index.min()} to {index.max()} in {n} rows (first {echo(index.head(5).to_list())}); expected "
                    f"each query index 0 to {n - 1} once")
        matched = rows.filter(pl.col("matches") > 0)
        if matched.is_empty():
            return (f"column 'matches' is 0 for every query of protocol {protocol!r}; expected at least one query "
                    f"with a good match (an evaluation without one writes no outcomes)")
        checks = (
            ("first_rank", ~(pl.col("first_rank") >= 1).fill_null(False),
             "the 1-based rank (>= 1) of the first good match of each query that has one"),
            ("last_rank", ~(pl.col("last_rank") >= pl.max_horizontal("first_rank", "matches")).fill_null(False),
             "the rank of the last good match of each query that has one, >= first_rank and >= matches"),
            ("ap", ~(pl.col("ap").is_finite() & pl.col("ap").is_between(0, 1)).fill_null(False),
             "a finite average precision in [0, 1] for each query with a good match"),
        )
        for column, bad, expected in checks:
            found = matched.filter(bad)[column]
            if len(found):
                return f"column '{column}' of protocol {protocol!r} holds {_found(found)}; expected {expected}"
        lists[protocol] = rows.sort("query")["tracklet"]
    (first, tracklets), *others = lists.items()
    for protocol, other in others:
        if not other.equals(tracklets):
            at = next((i for i, (a, b) in enumerate(zip(tracklets, other)) if a != b), None)
            found = (f"{len(tracklets)} and {len(other)} queries" if at is None
                     else f"query {at}: {echo(tracklets[at])} and {echo(other[at])}")
            return (f"column 'tracklet' differs between protocols {first!r} and {protocol!r} ({found}); expected "
                    f"one query list, the same tracklet at each query index under every protocol")
    return None
