"""Which runs share a test set: only those are pooled into a point, paired, or weighed on one Pareto front.

Two runs are on the same test set when they were scored on the same prepared data (the manifest hash
of their records), under the same protocol (their primary one) and on the same queries in the same
order (the tracklets of their per-query outcomes, by query index): only then is query i of one query i
of the other. Within a plot group (a dataset, and on the latency axis a device) each test set becomes
a group of its own, named by what tells it apart, and a note says which points were not compared and
why. A part a run does not know (no hash in an MLflow run, no per-query outcomes, a sweep's aggregated
trial) is taken to be the one value its plot group knows; where the group knows several, it stays
unknown, a test set of its own.
"""

from __future__ import annotations

import hashlib
import itertools

import polars as pl

from harness.errors import UserError
from harness.echo import echo
from harness.evaluate.queries import fix_hint, read_queries

PARTS = ("manifest", "protocol", "queries")  # a test set: its fields, in the order of the `test_set` struct
TEST_SET = pl.Struct({part: pl.String for part in PARTS})


def query_list(location: str, protocol: str, preset: str | None) -> str:
    """'<count>:<digest>' of the tracklets of `protocol`'s queries, in query order, in the per-query outcomes at
    `location` (checked as they are read)."""
    table = read_queries(location, preset)
    tracklets = table.filter(pl.col("protocol") == protocol).sort("query")["tracklet"]
    if tracklets.is_empty():
        raise UserError(f"per-query outcomes {location}: column 'protocol' holds "
                        f"{echo(table['protocol'].unique(maintain_order=True).to_list())} but not {protocol!r}, the "
                        f"primary protocol of the run record beside them; expected its outcomes too; {fix_hint(preset)}")
    digest = hashlib.blake2b("\0".join(tracklets).encode(), digest_size=16).hexdigest()
    return f"{len(tracklets)}:{digest}"


def _shown(part: str, value: str | None) -> str:
    """A test set's part as a reader tells it apart (in plain ASCII: it names groups, DVC metrics' keys): a short
    hash, the protocol, the query list's short digest and size."""
    if value is None:
        return "unknown"
    if part == "manifest":
        return value.rpartition(":")[2][:8]
    if part == "queries":
        count, _, digest = value.partition(":")
        return f"{digest[:8]} ({count})"
    return value


def by_test_set(runs: pl.DataFrame) -> pl.DataFrame:
    """`runs` (with a plot `group`) with their `dataset_group` (that group), `test_set` (struct of PARTS, None where
    unknown) and `group` split by test set, reading each run's per-query outcomes for its query list."""
    rows = runs.select("group", "manifest_hash", "protocol", "queries", "preset").rows()
    groups = [row[0] for row in rows]
    found = [{"manifest": manifest, "protocol": protocol,
              "queries": query_list(queries, protocol, preset) if queries and protocol else None}
             for _, manifest, protocol, queries, preset in rows]
    known = {(g, part): {s[part] for g2, s in zip(groups, found) if g2 == g} - {None}
             for g in set(groups) for part in PARTS}
    # An unknown part cannot contradict the one value its group knows; against several it could be any of them.
    sets = [{part: min(known[g, part]) if value is None and len(known[g, part]) == 1 else value
             for part, value in s.items()} for g, s in zip(groups, found)]
    told = {g: [part for part in PARTS if len({s[part] for g2, s in zip(groups, sets) if g2 == g}) > 1]
            for g in set(groups)}
    names = [f"{g} [{', '.join(f'{part} {_shown(part, s[part])}' for part in told[g])}]" if told[g] else g
             for g, s in zip(groups, sets)]
    return runs.with_columns(dataset_group=pl.col("group"), group=pl.Series(names, dtype=pl.String),
                             test_set=pl.Series(sets, dtype=TEST_SET))


def notes(points: pl.DataFrame) -> list[str]:
    """One line for every two test sets of a plot group: which points were therefore not compared, and why."""
    out = []
    for dataset_group in points["dataset_group"].unique(maintain_order=True):
        sets = (points.filter(pl.col("dataset_group") == dataset_group)
                .group_by("group", maintain_order=True).agg(pl.col("label").unique(maintain_order=True),
                                                           pl.col("test_set").first()))
        for a, b in itertools.combinations(sets.iter_rows(named=True), 2):
            why = ", ".join(f"{part} {_shown(part, a['test_set'][part])} vs {_shown(part, b['test_set'][part])}"
                            for part in PARTS if a["test_set"][part] != b["test_set"][part])
            out.append(f"{' + '.join(a['label'])} and {' + '.join(b['label'])} are on different test sets ({why}): "
                       f"not compared")
    return out
