"""The report as the tools users open show it: `dvc metrics show` as a row per preset, `dvc plots show` with one y title
per metric, and pareto.html readable at any width.

Built from the committed run records (fewer P(front) draws: the layout is under test, not the numbers).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import polars as pl
import pytest
import yaml

from harness.errors import UserError
from harness.report.build import build_report
from harness.report.metric_files import point_file_names, write_point_metrics
from harness.report.tables import intro
from project_copy import DVC, ROOT, copy_project, run

PRESETS = ("baseline", "nvan", "ste_nvan")
KEYS = {"rank1", "rank1_lo", "rank1_hi", "map", "map_lo", "map_hi", "gmacs", "seeds"}  # latency: metrics.json


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, pl.DataFrame]:
    """The report of the committed records, as the DVC stage writes it, and its points."""
    out = tmp_path_factory.mktemp("report") / "reports"
    _, points, _ = build_report(out, records=[ROOT / "reports" / "runs" / p for p in PRESETS], dataset="mars",
                                draws=200)
    return out, points


def test_a_metrics_file_per_point_with_short_keys(report):
    out, points = report
    assert sorted(p.name for p in (out / "metrics").iterdir()) == [f"{p}.json" for p in PRESETS]
    for r in points.iter_rows(named=True):
        found = json.loads((out / "metrics" / f"{r['label']}.json").read_text())
        assert set(found) == KEYS and found["seeds"] == r["seeds"]
        for m in ("rank1", "map"):
            assert found[m] == round(r[f"{m}_pct"], 2)
            assert found[f"{m}_lo"] <= found[m] <= found[f"{m}_hi"]
        assert found["gmacs"] == pytest.approx(r["gmacs"], rel=1e-3)


def frame(rows: list[tuple[str, str, str]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["group", "label", "config_key"], orient="row")


def test_metrics_file_names_never_mix_groups_or_configurations():
    one = frame([("mars (synthetic)", "baseline", "k1"), ("mars (synthetic)", "t000 p0230", "k2")])
    assert point_file_names(one) == ["baseline.json", "t000-p0230.json"]
    several = frame([("mars (synthetic) on cpu: A", "nvan", "k1"), ("mars (synthetic) on cuda: B", "nvan", "k1"),
                     ("duke", "nvan", "0123456789abcdef"), ("duke", "nvan", "fedcba9876543210")])
    assert point_file_names(several) == ["mars-synthetic-on-cpu-A/nvan.json", "mars-synthetic-on-cuda-B/nvan.json",
                                         "duke/nvan-01234567.json", "duke/nvan-fedcba98.json"]
    with pytest.raises(UserError, match=r"share the metrics files \['a-b.json'\]"):
        point_file_names(frame([("g", "a b", "k1"), ("g", "a/b", "k2")]))


def test_a_point_gone_from_the_report_leaves_no_metrics_file(report, tmp_path):
    _, points = report
    folder = tmp_path / "metrics"
    write_point_metrics(folder, points)
    write_point_metrics(folder, points.filter(pl.col("label") != "nvan"))
    assert sorted(p.name for p in folder.iterdir()) == ["baseline.json", "ste_nvan.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["metrics"]  # no staging folder left behind


def test_pareto_html_reads_at_any_width(report):
    page = (report[0] / "pareto.html").read_text()
    # Every table scrolls sideways in its own box: the page never grows wider than the window.
    assert page.count("<table>") == page.count('<div class="scroll"><table>') > 0
    assert re.search(r"\.scroll \{[^}]*overflow-x: auto", page)
    terms = re.search(r"<ul>(.*?)</ul>", page, re.S)[1]
    assert terms.count("<li>") == len(intro("gmacs")) and "<b>P(front)</b>" in terms
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert not re.search(r"<script[^>]*src|<link|@import|url\(\s*['\"]?(https?:)?//", page)


@pytest.mark.slow
def test_dvc_shows_a_row_per_preset_and_a_plot_per_metric(report, tmp_path):
    """`dvc metrics show` and `dvc plots show` on a repository holding dvc.yaml, params.yaml and the report."""
    def keep(name: str) -> bool:
        return name in ("dvc.yaml", "params.yaml", ".gitignore") or name.startswith(".dvc/")

    def with_report(copy: Path) -> None:
        shutil.copytree(report[0], copy / "reports")

    repo = copy_project(tmp_path / "repo", keep, untracked=True, edit=with_report)
    data = yaml.safe_load((repo / "params.yaml").read_text())["data"]
    shown = json.loads(run(DVC, "metrics", "show", "--json", cwd=repo).stdout)
    files = next(iter(shown.values()))["data"]
    assert sorted(files) == [f"reports/metrics/{p}.json" for p in PRESETS]
    assert all(set(f["data"]) == KEYS for f in files.values())

    plots = json.loads(run(DVC, "plots", "show", "--json", cwd=repo).stdout)["data"]
    assert plots["reports/pareto.png"][0]["type"] == "image"  # the one view that needs no CDN
    for name, metric in (("rank-1 vs GMACs", "rank1"), ("mAP vs GMACs", "map")):
        spec = plots[name][0]["content"]
        row = spec["data"]["values"][0]
        assert spec["encoding"]["y"]["field"] == f"{metric}_pct"
        # The interval's columns, named from the y column by the template, are columns of pareto.csv.
        for calc in spec["transform"]:
            column = re.fullmatch(r"toNumber\(datum\[replace\('(\w+)', '(\w+)', '(\w+)'\)\]\)", calc["calculate"])
            assert column and column[1].replace(column[2], column[3]) in row
        titles = {layer["encoding"]["y"]["title"] for layer in spec["layer"] if "y" in layer["encoding"]}
        assert titles == {spec["encoding"]["y"]["title"]} and spec["encoding"]["y"]["title"].startswith(
            "rank-1 (%)" if metric == "rank1" else "mAP (%)")
        x = spec["encoding"]["x"]
        assert x["axis"]["labelAngle"] and x["axis"]["labelOverlap"]  # tick labels that never overlap
        assert f"GMACs per clip at {data['frames']}x{data['height']}x{data['width']} (T x H x W)" in x["title"]
    run(DVC, "plots", "show", cwd=repo)
    assert (repo / "dvc_plots" / "index.html").is_file()
    assert run("git", "status", "--porcelain", cwd=repo).stdout == ""  # dvc_plots/ is ignored
