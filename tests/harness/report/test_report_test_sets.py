"""The report pools seeds, pairs points and weighs Pareto fronts only within one test set (same prepared data, protocol
and ordered query list), and refuses per-query files holding values no evaluation writes.

Built on copies of seed 0 of the committed nvan and baseline runs, through the CLI as `python -m harness.report`
runs it.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from harness.cli import run
from harness.report.__main__ import main

ROOT = Path(__file__).resolve().parents[3]
RUNS = ROOT / "reports" / "runs"


@pytest.fixture
def records(tmp_path) -> list[Path]:
    """Seed 0 of the committed nvan and baseline runs, each copied with its per-query outcomes beside it."""
    paths = []
    for preset in ("nvan", "baseline"):
        (tmp_path / preset).mkdir()
        for suffix in (".json", ".queries.parquet"):
            shutil.copy(RUNS / preset / f"seed0{suffix}", tmp_path / preset / f"seed0{suffix}")
        paths.append(tmp_path / preset / "seed0.json")
    return paths


def edit_record(path: Path, change) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def queries_of(record: Path) -> Path:
    return record.with_suffix(".queries.parquet")


def other_manifest(record: Path) -> None:
    """The run as if trained on another prepared MARS."""
    edit_record(record, lambda r: r["dataset"].update(manifest_hash="blake2b:c3d4" + "0" * 60))


def shuffled_queries(record: Path) -> None:
    """The same tracklets, in another query order (alike under every protocol, so the file itself stays valid)."""
    table = pl.read_parquet(queries_of(record))
    order = np.random.default_rng(0).permutation(table.filter(pl.col("protocol") == "standard").height)
    table = table.with_columns(pl.col("tracklet").gather(order).over("protocol"))
    table.write_parquet(queries_of(record))


def other_protocol(record: Path) -> None:
    """The run's primary protocol (the one its point reports) is `standard`, not `mars-official`."""
    edit_record(record, lambda r: r["config"]["eval"].update(protocols=["standard", "mars-official"]))


def report(records: list[Path], out: Path, capsys) -> tuple[int, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run(main, ["--out-dir", str(out), *[a for p in records for a in ("--runs", str(p))]])
    return exit_.value.code, capsys.readouterr().out


@pytest.mark.parametrize("change, part", [(None, None), (other_manifest, "manifest"), (shuffled_queries, "queries"),
                                          (other_protocol, "protocol")])
def test_runs_on_different_test_sets_are_never_compared(records, tmp_path, capsys, monkeypatch, change, part):
    monkeypatch.chdir(ROOT)
    if change:
        change(records[1])
    code, out = report(records, tmp_path / "out", capsys)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    compared = json.loads((tmp_path / "out" / "comparisons.json").read_text())["groups"]
    assert code == 0
    if change is None:  # the control: the same test set, one group, the two points paired
        assert "different test sets" not in out and list(compared) == ["mars (synthetic)"]
        return
    groups = list(metrics)
    assert compared == {} and "decided" not in out
    assert len(groups) == 2 and all(g.startswith(f"mars (synthetic) [{part} ") for g in groups)
    assert sorted(label for g in groups for label in metrics[g]) == ["baseline", "nvan"]
    # Each point is still shown, with the interval of its own test set.
    assert all(entry["map_lo"] is not None for g in groups for entry in metrics[g].values())
    note = re.search(rf"^note: (baseline and nvan|nvan and baseline) are on different test sets \({part} (.+) vs (.+)\): "
                     rf"not compared$", out, re.M)
    assert note and note[2] != note[3], out
    assert f"- {note[0].removeprefix('note: ')}" in (tmp_path / "out" / "benchmark.md").read_text()
    assert all(f"{g}: rank-1 / mAP" in out for g in groups)


def refused(done, *words: str) -> bool:
    err = done.stderr.strip()
    return (done.returncode == 2 and "Traceback" not in err and err.startswith("error: ") and "\n" not in err
            and len(err) < 1500 and all(w in err for w in words))


NAN = float("nan")
BAD_FILES = {
    "every AP NaN": (lambda t: t.with_columns(ap=pl.lit(NAN)), ["column 'ap'", "nan", "finite"]),
    "an AP above 1": (lambda t: t.with_columns(ap=pl.col("ap") + 1), ["column 'ap'", "in [0, 1]"]),
    "no AP for a query with a match": (lambda t: t.with_columns(ap=pl.lit(None, pl.Float64)), ["column 'ap'", "None"]),
    "every query index 0": (lambda t: t.with_columns(query=pl.lit(0, pl.Int32)), ["column 'query'", "1 distinct",
                                                                                  "0 to 1499 once"]),
    "query indices out of range": (lambda t: t.with_columns(query=pl.col("query") + 1), ["column 'query'", "1500"]),
    "a first rank of 0": (lambda t: t.with_columns(first_rank=pl.lit(0, pl.Int64)),
                          ["column 'first_rank'", ">= 1"]),
    "a last rank before the first": (lambda t: t.with_columns(last_rank=pl.col("first_rank") - 1),
                                     ["column 'last_rank'", ">= first_rank"]),
    "negative match counts": (lambda t: t.with_columns(matches=-pl.col("matches")), ["column 'matches'", ">= 0"]),
    "no query with a match": (lambda t: t.with_columns(matches=pl.lit(0, pl.Int64)), ["column 'matches'",
                                                                                      "at least one query"]),
    "an empty tracklet name": (lambda t: t.with_columns(tracklet=pl.lit(None, pl.String)), ["column 'tracklet'",
                                                                                            "empty"]),
    "other tracklets under another protocol": (
        lambda t: t.with_columns(tracklet=pl.when(pl.col("protocol") == "standard")
                                 .then(pl.col("tracklet").reverse()).otherwise(pl.col("tracklet"))),
        ["column 'tracklet'", "'mars-official' and 'standard'"]),
    "no row of the primary protocol": (lambda t: t.filter(pl.col("protocol") == "standard"),
                                       ["column 'protocol'", "'mars-official'"]),
    "no rows": (lambda t: t.head(0), ["no rows"]),
    "a missing column": (lambda t: t.drop("ap"), ["missing or mistyped", "'ap'"]),
    "a mistyped column": (lambda t: t.with_columns(pl.col("query").cast(pl.Float64)), ["mistyped", "'query'"]),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_per_query_file_is_a_user_error(cli, records, tmp_path, case):
    mutate, words = BAD_FILES[case]
    path = queries_of(records[0])
    mutate(pl.read_parquet(path)).write_parquet(path)
    done = cli("harness.report", "--runs", str(records[0]), "--runs", str(records[1]),
               "--out-dir", str(tmp_path / "out"))
    assert refused(done, str(path), *words, "dvc repro -f train@nvan", "--queries"), done.stderr
    assert not (tmp_path / "out").exists()
