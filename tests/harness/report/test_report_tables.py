"""What a reader sees of the statistics: the tables of benchmark.md and pareto.html, the per-seed and comparison
tables, the notes on pooled hardware and optimistic selection, the epoch plot, DVC's metrics and the summary.

Built from hand-made points and comparisons shaped as harness/report/points.py hands them over, so the rendering is
tested apart from the statistics.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from matplotlib.text import Annotation, Text

from harness.report.__main__ import format_summary
from harness.report.build import write_report
from harness.report.plot import draw
from harness.report.points import assess_points
from harness.report.runs import SCHEMA, _record_row, collect_runs, select_runs
from harness.results.records import RunRecord
from harness.report.tables import DETAILS_HEAD, MAIN_HEAD, markdown
from harness.report.testsets import TEST_SET

ROOT = Path(__file__).resolve().parents[3]
GROUP = "mars (synthetic)"
# The old single table's 24 columns: the main table and the details keep every one between them.
OLD_COLUMNS = {"Pareto", "point", "dataset", "kind", "seeds", "input", "params (M)", "GMACs", "GMACs/tracklet",
               "test sampler", "latency (ms)", "latency on", "rank-1 [95 % interval]", "± seeds", "P(front) rank-1",
               "mAP [95 % interval]", "P(front) mAP", "mINP", "rank-5", "rank-10", "rank-20", "MLflow run",
               "git commit"}


def point(label: str, gmacs: float, rank1: list[float], mean_ap: list[float], **over) -> dict:
    """One point of the contract: its seeds' scores (fractions) and everything a table or the figure reads."""
    seeds, mean = len(rank1), {"rank1": sum(rank1) / len(rank1), "map": sum(mean_ap) / len(mean_ap)}
    row = dict.fromkeys(SCHEMA) | {
        "group": GROUP, "dataset_group": GROUP, "test_set": {"manifest": "m", "protocol": "p", "queries": "q"},
        "label": label, "kind": "train", "status": "finished", "dataset": "mars", "synthetic": True,
        "preset": label, "config_key": f"key-{label}", "input": "8x64x32", "gmacs": gmacs, "cost": gmacs,
        "params_m": 0.5, "latency_ms": 9.5, "latency_device": "cpu: AMD EPYC", "run_id": "a" * 32,
        "git_commit": "0123456789abcdef", "seeds": seeds, "seed_list": list(range(seeds)),
        "rank1_per_seed": rank1, "map_per_seed": mean_ap, "seed_measured": seeds > 1,
        "hardware": "AMD EPYC", "pooled_hardware": False, "selection": "last",
        **mean, **{f"{m}_pct": 100 * mean[m] for m in ("rank1", "map")},
        **{f"{m}_{s}_pct": 100 * mean[m] + d for m in ("rank1", "map") for s, d in (("lo", -2.0), ("hi", 2.0))},
        **{f"{m}_std_pct": 1.5 if seeds > 1 else None for m in ("rank1", "map")},
        **{f"minp_{s}_pct": None for s in ("lo", "hi", "std")},
        **{f"{m}_pct": 10.0 for m in ("minp", "rank5", "rank10", "rank20")},
        **{f"{k}_{m}": v for m in ("rank1", "map") for k, v in (("pareto", False), ("sure", False), ("p_front", 0.5))},
    }
    return row | over


def points_frame(*rows: dict) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema_overrides=SCHEMA | {"test_set": TEST_SET}, infer_schema_length=None)


def comparison(a: str, b: str, decided: bool, holm: bool, needed: int | None = 4) -> dict:
    found = {"diff": 0.03, "lo": 0.01 if decided else -0.01, "hi": 0.05, "decided": decided, "p": 0.004 if holm else
             0.03, "p_holm": 0.012 if holm else 0.09, "decided_holm": holm, "p_improve": 0.78, "mdd": 0.021,
             "seeds_needed": needed, "seeds": 3}
    return {"group": GROUP, "a": a, "b": b, "pairing": "seeds paired by index", "family": 4,
            "rank1": found, "map": found | {"decided": False, "decided_holm": False, "lo": -0.01}}


@pytest.fixture
def points() -> pl.DataFrame:
    """Three points: one sure on both fronts, one on the estimates' front, one pooling hardware and optimistic."""
    return points_frame(
        point("ste_nvan", 0.02, [0.06, 0.07, 0.065], [0.03, 0.04, 0.035], pareto_rank1=True, sure_rank1=True,
              pareto_map=True, p_front_rank1=0.99),
        point("baseline", 0.04, [0.09, 0.10, 0.095], [0.05, 0.06, 0.055], pareto_rank1=True, p_front_rank1=0.97),
        point("nvan", 0.06, [0.14, 0.15, 0.13], [0.07, 0.08, 0.075], hardware="AMD EPYC + Intel Xeon",
              pooled_hardware=True, selection="test"),
        point("one_seed", 0.08, [0.12], [0.06]))


@pytest.fixture
def comparisons() -> list[dict]:
    wider = comparison("nvan", "ste_nvan", True, False, None)
    wider["map"] |= {"mdd": 0.03}
    return [comparison("baseline", "nvan", decided=True, holm=True), wider]


def md_tables(md: str) -> dict[str, list[list[str]]]:
    """The markdown tables of `md` by the heading above them ('## group' or '### title'), header row first."""
    tables: dict[str, list[list[str]]] = {}
    heading = ""
    for line in md.splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif line.startswith("| ") and not line.startswith("| ---"):
            tables.setdefault(heading, []).append(line[2:-2].split(" | "))
    return tables


def test_main_table_has_at_most_12_columns_and_the_details_the_rest(points, comparisons):
    tables = md_tables(markdown(points, None, "4 run records", comparisons=comparisons))
    main, details = tables[GROUP], tables["Details"]
    assert main[0] == MAIN_HEAD and len(MAIN_HEAD) <= 12 and details[0] == DETAILS_HEAD
    assert OLD_COLUMNS <= set(MAIN_HEAD) | set(DETAILS_HEAD)
    assert all(len(row) == len(MAIN_HEAD) for row in main) and len(main) == 1 + len(points)
    rows = {row[1]: row for row in main[1:]}
    assert (rows["ste_nvan"][0], rows["baseline"][0], rows["nvan ‡"][0]) == ("★ rank-1, ☆ mAP", "☆ rank-1", "")
    assert rows["one_seed"][6] == rows["one_seed"][9] == "not measured" and rows["baseline"][6] == "1.5"


def test_per_seed_rows(points, comparisons):
    md = markdown(points, None, "4 run records", comparisons=comparisons)
    found = md_tables(md)["Per-seed scores"]
    assert found[0] == ["point", "seed", "rank-1", "mAP"] and len(found) == 1 + 3 + 3 + 3 + 1
    assert found[1:4] == [["ste_nvan", "0", "6.0", "3.0"], ["ste_nvan", "1", "7.0", "4.0"],
                          ["ste_nvan", "2", "6.5", "3.5"]]


def test_comparison_rows_with_the_holm_line(points, comparisons):
    md = markdown(points, None, "4 run records", comparisons=comparisons)
    found = md_tables(md)["Comparisons"]
    assert found[0][:4] == ["A", "B", "metric", "A − B [95 % interval]"] and len(found) == 1 + 2 * 2
    assert found[1] == ["baseline", "nvan", "rank-1", "+3.0 [+1.0, +5.0]", "yes, survives Holm", "0.004", "0.012",
                        "0.78", "2.1", "4"]
    assert found[2][4] == "no" and found[3][4] == "yes" and found[3][-1] == "none (test-set noise)"
    assert ("Pairing: seeds paired by index, every pair. 4 comparisons in this group's family. Decided is per "
            "comparison (its own 95 % interval excludes 0) and does not control the family-wise error: 2 of 4 are "
            "decided; 1 survives Holm's adjustment") in md
    assert "Resolution: at 3 seed(s) per point, a paired comparison detects (80 % power, two-sided 5 %) a difference " \
           "of 2.1 points of rank-1 (median; 2.1–2.1) and 2.5 points of mAP (median; 2.1–3.0), over 2 pair(s)" in md


def test_pooled_hardware_and_optimistic_points_are_said_so(points, comparisons, tmp_path):
    write_report(points, None, tmp_path, "4 run records", comparisons=comparisons)
    md, page = (tmp_path / "benchmark.md").read_text(), (tmp_path / "pareto.html").read_text()
    main = {row[1]: row for row in md_tables(md)[GROUP][1:]}
    assert main["nvan ‡"][-1] == "AMD EPYC + Intel Xeon †" and main["baseline"][-1] == "AMD EPYC"
    for text in (md, page):
        assert "† pools runs from different hardware: nvan (AMD EPYC + Intel Xeon)" in text
        assert "‡ optimistic (best epoch chosen on the test set): nvan." in text
        assert "One seed, seed variation not measured: one_seed." in text
    details = {row[0]: row for row in md_tables(md)["Details"][1:]}
    assert details["nvan ‡"][8] == "optimistic (best epoch chosen on the test set)"
    assert details["baseline"][8] == "last epoch"


def test_sure_points_are_filled_whatever_their_p_front(points):
    fig, _ = draw(points, None)
    rank1 = fig.axes[0]
    filled = {tuple(round(v, 6) for v in c.get_offsets()[0]): c.get_facecolors()[0][:3].tolist() != [1.0, 1.0, 1.0]
              for c in rank1.collections if c.get_gid()}
    # baseline has P(front) 0.97 but is not surely on the front: hollow.
    assert filled == {(0.02, 6.5): True, (0.04, 9.5): False, (0.06, 14.0): False, (0.08, 12.0): False}


def test_labels_do_not_overlap():
    n = 10  # a tight cluster between two far anchors: every label's first choice collides
    gmacs = [0.1, *np.linspace(1.0, 1.2, n - 2), 10.0]
    acc = [0.1, *np.linspace(0.50, 0.52, n - 2), 0.9]
    cluster = pl.DataFrame({
        "run_id": [f"{i:032x}" for i in range(n)], "label": [f"t{i:03d} p0230" for i in range(n)],
        "kind": ["trial"] * n, "dataset": ["duke"] * n, "synthetic": [False] * n, "input": ["8x128x64"] * n,
        "start_time": list(range(n)), "gmacs": gmacs, **{m: acc for m in ("rank1", "rank5", "rank10", "rank20",
                                                                           "map", "minp")},
    })
    runs = pl.concat([pl.DataFrame(schema=SCHEMA), cluster], how="diagonal_relaxed")
    points, _ = assess_points(select_runs(runs, None, latest_per_label=True))
    fig, _ = draw(points, None)
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        labels = [t for t in ax.texts if isinstance(t, Annotation)]
        assert len(labels) == n
        for t in labels:
            t.update_positions(renderer)
        boxes = [Text.get_window_extent(t, renderer) for t in labels]  # the text, without its leader line
        for i in range(n):
            for j in range(i):
                assert not boxes[i].overlaps(boxes[j]), (labels[i].get_text(), labels[j].get_text())


def test_metrics_files_keep_a_short_row_and_comparisons_their_own_file(points, comparisons, tmp_path):
    paths = write_report(points, None, tmp_path, "4 run records", comparisons=comparisons)
    assert tmp_path / "comparisons.json" in paths
    for r in points.iter_rows(named=True):
        found = json.loads((tmp_path / "metrics" / f"{r['label']}.json").read_text())
        assert set(found) == {"rank1", "rank1_lo", "rank1_hi", "map", "map_lo", "map_hi", "gmacs", "seeds"}
    assert "comparisons" not in json.loads((tmp_path / "metrics.json").read_text())
    saved = json.loads((tmp_path / "comparisons.json").read_text())
    pair = saved["groups"][GROUP]["baseline - nvan"]
    assert (pair["pairing"], pair["family"]) == ("seeds paired by index", 4)
    assert pair["rank1"] == {"diff": 3.0, "lo": 1.0, "hi": 5.0, "decided": True, "p": 0.004, "p_holm": 0.012,
                             "decided_holm": True, "p_improve": 0.78, "mdd": 2.1, "seeds_needed": 4, "seeds": 3}
    assert saved["groups"][GROUP]["nvan - ste_nvan"]["rank1"]["seeds_needed"] is None and "mdd" in saved["units"]


def history(seed: int) -> str:
    """A run's history as records keep it: loss every epoch (1, 2, ...), rank-1 and mAP at epochs 5 and 10."""
    return json.dumps([{"epoch": e, "loss": 1.0 / e, "lr": 1e-3}
                       | ({"rank1": 0.05 + 0.01 * e + 0.001 * seed, "map": 0.03 + 0.005 * e} if e in (5, 10) else {})
                       for e in range(1, 11)])


def test_the_html_draws_accuracy_against_epoch_a_line_per_seed(points, comparisons, tmp_path):
    runs = pl.DataFrame([{"group": GROUP, "label": label, "config_key": f"key-{label}", "seed": s,
                          "selection": "test" if label == "nvan" else "last", "history": history(s)}
                         for label in ("baseline", "nvan") for s in range(3)]
                        + [{"group": GROUP, "label": "one_seed", "config_key": "key-one_seed", "seed": 0,
                            "selection": "last", "history": None}])
    write_report(points, None, tmp_path, "7 run records", comparisons=comparisons, runs=runs)
    page = (tmp_path / "pareto.html").read_text()
    for panel in ("0-0", "0-1"):  # rank-1, mAP
        lines = re.findall(rf'<g id="epoch-{panel}-(\d+)-(\d+)" class="point"><title>', page)
        assert sorted(lines) == [(p, s) for p in "01" for s in "012"]
    assert re.search(r"<title>nvan ‡, seed 1: rank-1 \(%\) at epoch 5: 10\.1, 10: 15\.1</title>", page)
    assert "Accuracy against epoch" in page


def test_the_html_says_when_no_run_has_a_history(points, tmp_path):
    write_report(points, None, tmp_path, "4 run records")
    page = (tmp_path / "pareto.html").read_text()
    assert "No run of this report recorded its accuracy at each evaluated epoch" in page


def test_the_header_counts_records_not_folders(tmp_path):
    folders = []
    for preset in ("baseline", "nvan", "ste_nvan"):
        folders.append(tmp_path / preset)
        folders[-1].mkdir()
        for seed in range(3):
            record = json.loads((ROOT / "reports" / "runs" / "nvan" / f"seed{seed}.json").read_text())
            (folders[-1] / f"seed{seed}.json").write_text(json.dumps({"selection": "test", "history": []} | record))
    runs, source = collect_runs(records=folders)
    assert (len(runs), source) == (9, "9 run records (3 folders)")
    assert collect_runs(records=[*folders[:2], folders[2] / "seed0.json"])[1] == "7 run records (2 folders, 1 file)"
    assert collect_runs(records=[folders[0] / "seed0.json"])[1] == "1 run record"


def test_a_record_row_reads_hardware_selection_and_history():
    record = json.loads((ROOT / "reports" / "runs" / "nvan" / "seed0.json").read_text())
    # A record written before selection and history existed chose its epoch on the test set.
    legacy = {key: value for key, value in record.items() if key not in ("selection", "history")}
    legacy["config"] = record["config"] | {"eval": {k: v for k, v in record["config"]["eval"].items()
                                                    if k not in ("select", "select_by")}}
    old = _record_row(RunRecord.model_validate(legacy), None)
    assert (old["gpu"], old["selection"], old["history"]) == (None, "test", None)
    assert old["cpu"] == record["run"]["worker_cpu"]
    steps = [{"epoch": 1, "loss": 2.0, "lr": 1e-3, "rank1": 0.1, "map": 0.05}]
    record |= {"selection": "last", "history": steps}
    record["run"] |= {"worker_cpu": "Intel Xeon", "gpu": "NVIDIA H100"}
    new = _record_row(RunRecord.model_validate(record), None)
    assert (new["cpu"], new["gpu"], new["selection"], json.loads(new["history"])) == (
        "Intel Xeon", "NVIDIA H100", "last", steps)


def test_the_summary_counts_decided_comparisons_and_holm(points, comparisons):
    summary = format_summary(points.with_columns(train_s=pl.lit(None, pl.Float64)), comparisons)
    assert "2 of 4 comparisons decided (per-comparison 95 %; 1 survive Holm): baseline beats nvan on rank-1" in summary
    assert "note: ‡ optimistic (best epoch chosen on the test set): nvan." in summary
