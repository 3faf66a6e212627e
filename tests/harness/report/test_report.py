import itertools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from matplotlib.collections import PathCollection

from harness.errors import UserError
from harness.config import InputSize
from harness.cli import run
from harness.measure.macs import macs_on_meta
from harness.measure.cost import main as cost_main
from harness.report.__main__ import main
from harness.report.build import build_report, write_report
from harness.report.plot import draw
from harness.report.points import assess_points
from harness.report.runs import (PANELS, PUBLISHED, load_costs, load_runs, open_experiment, published_points,
                                 select_runs)
from harness.results.tracking import connect, log_metrics, start_run
from models.presets import preset_spec

ROOT = Path(__file__).resolve().parents[3]


def points_of(runs: pl.DataFrame) -> pl.DataFrame:
    """The report's points of `runs` (intervals where per-query outcomes exist)."""
    return assess_points(runs)[0]
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"


def add_run(client, exp, label, kind, dataset, synthetic, gmacs, rank1, mean_ap, parent=None, status="finished"):
    tags = {"nvan.kind": kind, "nvan.label": label, "dataset": dataset, "dataset.synthetic": str(synthetic).lower(),
            "preset": label if kind == "train" else "ste_nvan", "protocol": "mars-official", "device": "cpu",
            "nvan.status": status}
    params = {"input": "8x128x64", "git_commit": "0123456789abcdef-dirty", "spec.width": 16,
              "spec.non_local": "[0, 2, 3, 0]", "train.lr": 0.0001, "train.epochs": 6}
    run_id = start_run(client, exp, label, params, tags, parent_run_id=parent)
    if gmacs is not None:
        log_metrics(client, run_id, {"cost.gmacs": gmacs, "cost.gmacs_paper": 8 * gmacs, "cost.params_m": 1.5,
                                     "cost.latency_ms": 12.5}, step=0)
    if rank1 is not None:
        log_metrics(client, run_id, {"best.rank1": rank1, "best.rank5": rank1 + 0.01, "best.rank10": rank1 + 0.02,
                                     "best.rank20": rank1 + 0.03, "best.map": mean_ap, "best.minp": mean_ap / 2,
                                     "best.epoch": 5}, step=6)
    time.sleep(0.005)  # distinct start times, so "newest run of a label" is defined
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sqlite store: synthetic MARS presets + a sweep, real MARS and real Duke runs."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    client, exp = connect(uri, "nvan-bench")
    add_run(client, exp, "nvan", "train", "mars", True, 0.9, 0.30, 0.20)  # superseded by the rerun below
    add_run(client, exp, "baseline", "train", "mars", True, 0.5, 0.40, 0.30)
    add_run(client, exp, "nvan", "train", "mars", True, 1.0, 0.50, 0.35)
    add_run(client, exp, "ste_nvan", "train", "mars", True, 0.3, 0.45, 0.36)
    sweep = add_run(client, exp, "sweep", "sweep", "mars", True, None, None, None)
    rng = np.random.default_rng(0)
    for i in range(8):
        add_run(client, exp, f"t{i:03d}", "trial", "mars", True, float(rng.uniform(0.1, 2)),
                float(rng.uniform(0.1, 0.6)), float(rng.uniform(0.1, 0.4)), parent=sweep)
    add_run(client, exp, "t008", "trial", "mars", True, None, None, None, parent=sweep, status="infeasible")
    add_run(client, exp, "nvan", "train", "mars", False, 63.6, 0.89, 0.80)
    add_run(client, exp, "baseline", "train", "duke", False, 32.4, 0.95, 0.93)
    add_run(client, exp, "nvan", "train", "duke", False, 63.6, 0.96, 0.94)
    return uri


def dominated(points: pl.DataFrame, acc: str) -> list[bool]:
    rows = points.select("group", "cost", acc).rows()
    return [any(g2 == g and c2 <= c and a2 >= a and (c2 < c or a2 > a) for g2, c2, a2 in rows) for g, c, a in rows]


def test_load_runs_reads_the_schema(store):
    client, exp = open_experiment(store, "nvan-bench")
    runs = load_runs(client, exp)
    assert len(runs) == 16  # every train and trial run; the sweep parent is skipped
    assert set(runs["kind"]) == {"train", "trial"}
    trial = runs.filter(pl.col("label") == "t008").row(0, named=True)
    assert trial["status"] == "infeasible" and trial["gmacs"] is None and trial["parent_run_id"]
    real = runs.filter((pl.col("dataset") == "mars") & ~pl.col("synthetic")).row(0, named=True)
    assert (real["gmacs"], real["rank1"], real["map"], real["minp"]) == (63.6, 0.89, 0.80, 0.40)
    assert (real["input"], real["spec.non_local"], real["git_commit"]) == ("8x128x64", "[0, 2, 3, 0]",
                                                                          "0123456789abcdef-dirty")


def test_groups_filters_and_latest_label(store):
    runs = load_runs(*open_experiment(store, "nvan-bench"))
    everything = select_runs(runs, None, latest_per_label=False)
    assert sorted(everything["group"].unique()) == ["duke", "mars", "mars (synthetic)"]
    latest = select_runs(runs, "mars", latest_per_label=True)
    assert set(latest["group"]) == {"mars", "mars (synthetic)"}  # real and synthetic MARS stay apart
    nvan = latest.filter((pl.col("group") == "mars (synthetic)") & (pl.col("label") == "nvan"))
    assert nvan["gmacs"].to_list() == [1.0]  # the rerun replaced the older nvan run
    assert len(select_runs(runs, "mars", latest_per_label=False).filter(pl.col("label") == "nvan")) == 3
    assert set(select_runs(runs, "duke", True)["dataset"]) == {"duke"}


def test_plot_points_front_per_group(store):
    points = points_of(select_runs(load_runs(*open_experiment(store, "nvan-bench")), None, True))
    measured = points.drop_nulls("gmacs")
    for acc in ("rank1", "map"):
        assert measured[f"pareto_{acc}"].to_list() == [not d for d in dominated(measured, acc)]
    assert not points.filter(pl.col("gmacs").is_null())["pareto_rank1"].any()
    synthetic = points.filter(pl.col("group") == "mars (synthetic)")
    duke = points.filter(pl.col("group") == "duke")  # cheaper-but-worse and dearer-but-better: both on it
    assert duke["pareto_map"].to_list() == [True, True] and duke["label"].to_list() == ["baseline", "nvan"]
    assert synthetic["rank1_pct"].drop_nulls().max() == pytest.approx(100 * synthetic["rank1"].max())


def test_published_points_are_the_paper_at_our_cost():
    refs = published_points()
    size = InputSize(frames=8, height=256, width=128)
    for p, row in zip(PUBLISHED, refs.iter_rows(named=True)):
        assert (row["preset"], row["rank1_pct"], row["map_pct"]) == (p.preset, p.rank1, p.map)
        assert row["gmacs"] == macs_on_meta(preset_spec(p.preset, num_classes=625, width=64), size) / 1e9
    assert {(p.preset, p.rank1, p.map) for p in PUBLISHED} == {
        ("nvan", 90.0, 82.8), ("ste_nvan", 88.9, 81.2), ("baseline", 87.4, 79.4)}


def panel_points(ax) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    runs, stars = [], []
    for c in ax.collections:
        if isinstance(c, PathCollection):
            (stars if c.get_label().startswith("published") else runs).extend(map(tuple, c.get_offsets().tolist()))
    return runs, stars


def test_plot_data_one_group_per_panel(store):
    points = points_of(select_runs(load_runs(*open_experiment(store, "nvan-bench")), None, True))
    refs = published_points()
    fig, tips = draw(points, refs)
    axes = fig.axes
    assert len(axes) == 6  # duke, mars, mars (synthetic) x (rank-1, mAP)
    groups = [g for g in ("duke", "mars", "mars (synthetic)") for _ in PANELS]
    for ax, group, acc in zip(axes, groups, ["rank1", "map"] * 3):
        expected = points.filter(pl.col("group") == group).drop_nulls(["gmacs", acc])
        runs, stars = panel_points(ax)
        assert sorted(runs) == sorted(expected.select("gmacs", f"{acc}_pct").rows())
        # The paper's real-MARS numbers beside real MARS only: on synthetic panels they would squash the runs.
        assert sorted(stars) == (sorted(refs.select("gmacs", f"{acc}_pct").rows()) if group == "mars" else [])
        front = expected.filter(pl.col(f"pareto_{acc}")).sort("gmacs")
        step = ax.lines[0].get_data()
        assert list(step[0]) == front["gmacs"].to_list() and list(step[1]) == front[f"{acc}_pct"].to_list()
    assert len(tips) == 2 * len(points.drop_nulls("gmacs")) + 2 * len(refs)


def table_under(md: str, heading: str, after: str | None = None) -> list[list[str]]:
    """The body rows of the first markdown table under `heading` (the first `heading` after `after`)."""
    lines = md.splitlines()
    lines = lines[lines.index(after) if after else 0:]
    lines = lines[lines.index(heading) + 1:]
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    table = [line for line in itertools.takewhile(lambda line: line.startswith("| "), lines[start:])]
    return [line[2:-2].split(" | ") for line in table[2:]]


def test_report_files(store, tmp_path):
    points = points_of(select_runs(load_runs(*open_experiment(store, "nvan-bench")), "mars", True))
    paths = write_report(points, published_points(), tmp_path, "experiment 'nvan-bench' in test")
    assert [p.name for p in paths] == ["pareto.png", "pareto.html", "benchmark.md", "metrics.json", "comparisons.json",
                                       "pareto.csv", "metrics"]
    assert paths[0].read_bytes().startswith(b"\x89PNG")

    md = paths[2].read_text()
    main, details = table_under(md, "## mars (synthetic)"), table_under(md, "### Details", "## mars (synthetic)")
    # MLflow runs keep no per-query outcomes: means without intervals, seed spread or P(front); and, logging no
    # eval.select, they chose their epochs on the test set.
    ste = next(r for r in main if r[1] == "ste_nvan ‡")
    assert ste[1:] == ["ste_nvan ‡", "1", "0.3", "12.5", "45.0", "not measured", "–", "36.0", "not measured", "–",
                       "–"]
    assert next(r for r in details if r[0] == "ste_nvan ‡")[1:] == [
        "mars (synthetic)", "train", "8x128x64", "1.50", "–", "–", "–",
        "optimistic (best epoch chosen on the test set)",
        "18.0", "46.0", "47.0", "48.0", points.filter(pl.col("label") == "ste_nvan")["run_id"][0], "0123456789ab-dirty"]
    for r in points.iter_rows(named=True):
        group = table_under(md, f"## {r['group']}")
        cells = next(row for row in group if row[1] == f"{r['label']} ‡")
        assert cells[0] == ", ".join(f"☆ {name}" for acc, name in (("rank1", "rank-1"), ("map", "mAP"))
                                     if r[f"pareto_{acc}"])
    assert "‡ optimistic (best epoch chosen on the test set): " in md
    assert 0 < points["pareto_map"].sum() < len(points)
    assert "| NVAN | 90.0 | 82.8 |" in md

    metrics = json.loads(paths[3].read_text())
    assert set(metrics) == {"mars", "mars (synthetic)"}
    assert metrics["mars (synthetic)"]["nvan"] == {"seeds": 1, "rank1_pct": 50.0, "rank1_lo": None, "rank1_hi": None,
                                                   "rank1_std": None, "map_pct": 35.0, "map_lo": None, "map_hi": None,
                                                   "map_std": None, "gmacs": 1.0, "latency_ms": 12.5}
    assert json.loads(paths[4].read_text())["groups"] == {}  # nothing to compare without per-query outcomes
    csv = pl.read_csv(paths[5])
    assert len(csv) == len(points) and set(csv["group"]) == {"mars", "mars (synthetic)"}
    assert csv.filter(pl.col("pareto_map"))["label"].to_list() == points.filter(pl.col("pareto_map"))["label"].to_list()

    page = paths[1].read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert not re.search(r"<script[^>]*src|<link|@import|url\(\s*['\"]?(https?:)?//", page)
    assert page.count("<title>") == 1 + 2 * len(points.drop_nulls("gmacs")) + 2 * 3  # real MARS's 2 panels
    assert "run " + points.filter(pl.col("label") == "ste_nvan")["run_id"][0] in page


@pytest.fixture(scope="module")
def cost_files(tmp_path_factory) -> list[Path]:
    """Real `python -m harness.cost --out` files for two presets (small width, MACs only)."""
    out = tmp_path_factory.mktemp("cost")
    for preset in ("nvan", "ste_nvan"):
        assert cost_main(["--preset", preset, "--input", "4x256x128", "--no-measure", "--set", "cost.width=8",
                          "--set", "cost.benchmark=false", "--out", str(out / f"{preset}.json")]) == 0
    return [out / "nvan.json", out / "ste_nvan.json"]


def test_cost_table_merges_the_cost_files(store, tmp_path, cost_files):
    paths, *_ = build_report(tmp_path, mlflow=(store, "nvan-bench"), dataset="mars", cost_files=cost_files)
    assert paths[-1] == tmp_path / "cost.json"
    merged = json.loads(paths[-1].read_text())
    expected = [r for f in cost_files for r in json.loads(f.read_text())["reports"]]
    assert merged["reports"] == expected and [r["name"] for r in expected] == ["nvan", "ste_nvan"]
    assert merged["units"]["macs"] == "multiply-accumulates per clip"
    spec = preset_spec("ste_nvan", 625, width=8)
    assert expected[1]["macs"] == macs_on_meta(spec, InputSize(frames=4, height=256, width=128))
    md = (tmp_path / "benchmark.md").read_text()
    for r in expected:
        assert f"| {r['name']} | 4x256x128 | 8 | {r['params'] / 1e6:.2f} | {r['gmacs']:.3g} | 1 | – | – | – | – | – |" in md
    assert "<h2>Cost of each preset</h2>" in (tmp_path / "pareto.html").read_text()


def test_bad_cost_files_are_user_errors(store, tmp_path, cost_files):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "nvan.json").write_text("{not json")
    (bad / "baseline.json").write_text(json.dumps({"reports": [{"name": "baseline", "input": "8x64x32"}]}))
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"cost file .*missing\.json does not exist; --cost takes a JSON file written "
                                        r"by `python -m harness\.cost --out`.*reports/cost/<preset>\.json[^`]*$"):
        build_report(out, mlflow=(store, "nvan-bench"), dataset="mars", cost_files=[cost_files[0], bad / "missing.json"])
    with pytest.raises(UserError, match=r"cost file .*nvan\.json is not a harness\.cost report \(JSONDecodeError"):
        load_costs([bad / "nvan.json"])
    with pytest.raises(UserError, match=r"baseline\.json: a record lacks \['model_width', 'params', 'gmacs'\]"):
        load_costs([bad / "baseline.json"])
    assert not out.exists()


def test_missing_experiment_is_a_user_error(store, tmp_path):
    with pytest.raises(UserError, match="'other'.*dvc repro"):
        open_experiment(store, "other")
    with pytest.raises(UserError, match="store does not exist"):
        open_experiment(f"sqlite:///{tmp_path / 'none.db'}", "nvan-bench")
    assert not (tmp_path / "none.db").exists()
    connect(store, "empty")
    with pytest.raises(UserError, match="'empty'.*it is empty"):
        build_report(tmp_path, mlflow=(store, "empty"))
    assert not list(tmp_path.iterdir())


def test_cli_user_error_exits_2(store, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(SystemExit) as exit_:
        run(main, ["--from-mlflow", "--set", f"mlflow.tracking_uri={store}", "--out-dir", str(tmp_path),
                   "--dataset", "dukev"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "'nvan-bench'" in err and store in err and "'dukev'" in err and "['duke', 'mars']" in err


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run([sys.executable, "-m", "harness.report", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)


@pytest.mark.slow
def test_cli_end_to_end(store, tmp_path):
    done = cli("--from-mlflow", "--set", f"mlflow.tracking_uri={store}", "--set", f"report.out_dir={tmp_path}",
               "--dataset", "duke")
    assert done.returncode == 0, done.stderr
    assert set(json.loads((tmp_path / "metrics.json").read_text())) == {"duke"}
    assert "published" not in (tmp_path / "benchmark.md").read_text().lower()  # MARS numbers stay off Duke
    assert len(pl.read_csv(tmp_path / "pareto.csv")) == 2


def make_record(label: str, dataset: str = "mars", synthetic: bool = True, gmacs: float = 0.5, rank1: float = 0.4,
                mean_ap: float = 0.3, noisy: bool = False, finished: str = "2026-11-30T10:00:00Z",
                clips: float = 1.0, latency_s: float = 0.01, device: str = "cpu: test") -> dict:
    """A run record as harness.train --out writes it (harness/records.py)."""
    from harness.params import load_config
    from harness.results.records import run_record

    config = load_config(ROOT / "params.yaml", [f"model.preset={label}", f"data.dataset={dataset}"])
    spec = config.spec(10)
    scores = {"mars-official": {"rank1": rank1, "rank5": rank1 + 0.1, "rank10": rank1 + 0.2, "rank20": rank1 + 0.3,
                                "map": mean_ap, "minp": mean_ap / 2, "num_queries": 50.0}}
    latency = {"median_s": latency_s, "min_s": 0.9 * latency_s, "max_s": (2 if noisy else 1.1) * latency_s,
               "q1_s": 0.95 * latency_s, "q3_s": 1.05 * latency_s, "repeats": 5, "threads": 2, "device": device,
               "other_cpus": 0.0,
               "spread": 1.1 if noisy else 0.2, "noisy": noisy}
    return run_record(label=label, kind="train", config=config.model_dump(mode="json"), spec=spec,
                      manifest={"format": "mars", "content_hash": "blake2b:00", "synthetic": synthetic},
                      cost={"params_m": 1.5, "gmacs": gmacs, "gmacs_paper": 8 * gmacs, "latency": latency,
                            "eval_sampler": "dense" if clips != 1 else "chunk_first", "clips_per_tracklet": clips,
                            "gmacs_per_tracklet": clips * gmacs},
                      scores=scores, cmc={"mars-official": [rank1, rank1 + 0.1]}, best_epoch=3, epochs=4,
                      git_commit="0123456789abcdef0123456789abcdef01234567",
                      run={"mlflow_run_id": f"{label:0>32}", "seconds": 61.0, "finished_at": finished, "device": "cpu"})


@pytest.fixture
def record_files(tmp_path) -> list[Path]:
    paths = []
    for i, (label, gmacs, rank1, noisy) in enumerate([("baseline", 0.5, 0.4, False), ("nvan", 1.0, 0.5, True),
                                                      ("ste_nvan", 0.3, 0.45, False)]):
        path = tmp_path / "runs" / f"{label}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(make_record(label, gmacs=gmacs, rank1=rank1, noisy=noisy,
                                               finished=f"2026-11-30T10:0{i}:00Z")))
        paths.append(path)
    return paths


def test_report_from_run_records_alone(record_files, tmp_path, monkeypatch):
    # No MLflow store anywhere: the records are all the report needs.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'absent' / 'mlflow.db'}")
    paths, points, _ = build_report(tmp_path / "out", records=record_files)
    assert sorted(points["label"]) == ["baseline", "nvan", "ste_nvan"]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["mars (synthetic)"]["nvan"]["rank1_pct"] == 50.0
    md = (tmp_path / "out" / "benchmark.md").read_text()
    assert "| 10.0 noisy |" in md and "| 10.0 |" in md
    assert not (tmp_path / "absent").exists()
    row = points.filter(pl.col("label") == "nvan").row(0, named=True)
    epochs = str(json.loads(record_files[1].read_text())["config"]["train"]["epochs"])  # params.yaml's, today 30
    assert (row["spec.non_local"], row["train.epochs"], row["train_s"]) == ("[0, 2, 3, 0]", epochs, 61.0)


def test_report_adds_sweep_tables(record_files, tmp_path):
    sweep = tmp_path / "sweeps" / "demo" / "results.parquet"
    sweep.parent.mkdir(parents=True)
    pl.DataFrame({"label": ["t000 p0230", "t001 p0000"], "status": ["finished", "infeasible"], "map": [0.31, None],
                  "rank1": [0.42, None], "gmacs_input": [0.2, None], "dataset": ["mars", "mars"],
                  "synthetic": [True, True], "input": ["4x64x32", "4x64x32"], "mlflow_run_id": ["a" * 32, "b" * 32],
                  "git_commit": ["c" * 40] * 2, "sure_rank1": [True, False]}).write_parquet(sweep)
    _, points, _ = build_report(tmp_path / "out", records=record_files, sweeps=[sweep])
    trial = points.filter(pl.col("label") == "t000 p0230").row(0, named=True)
    assert (trial["kind"], trial["gmacs"], trial["map"], trial["parent_run_id"]) == ("trial", 0.2, 0.31, "demo")
    assert trial["sure_rank1"] is True and not trial["sure_map"]  # the sweep's verdict, not sure where it has none
    assert len(points) == 5


def test_bad_run_records_are_user_errors(record_files, tmp_path):
    (tmp_path / "junk.json").write_bytes(b"\xff\xfe\x00garbage")
    (tmp_path / "other.json").write_text(json.dumps({"schema": "something else"}))
    for path, message in [(tmp_path / "nope.json", "does not exist"), (tmp_path / "junk.json", "not readable JSON"),
                          (tmp_path / "other.json", "not a run record of this version")]:
        with pytest.raises(UserError, match=message):
            build_report(tmp_path / "out", records=[record_files[0], path])
    assert not (tmp_path / "out").exists()


def test_cli_needs_runs_or_mlflow(record_files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_:
        run(main, ["--out-dir", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--runs FILE" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exit_:
        run(main, ["--out-dir", str(tmp_path / "b"), *[a for p in record_files for a in ("--runs", str(p))]])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "training took 183 s in all" in out and "mars (synthetic)" in out


def test_report_on_measured_latency_keeps_devices_apart(tmp_path):
    """report.cost_axis latency: fronts on ms per clip, one row of panels per device, no paper stars."""
    runs = [("baseline", 0.5, 0.40, 0.020, "cpu: A"), ("nvan", 1.0, 0.50, 0.010, "cpu: A"),
            ("ste_nvan", 0.3, 0.45, 0.030, "cpu: A"), ("nvan", 1.0, 0.50, 0.002, "cuda: B")]
    paths = []
    for i, (label, gmacs, rank1, seconds, device) in enumerate(runs):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(make_record(label, gmacs=gmacs, rank1=rank1, latency_s=seconds, device=device,
                                                    finished=f"2026-11-30T10:0{i}:00Z")))
    _, points, _ = build_report(tmp_path / "out", records=paths, axis="latency", latest_per_label=False)
    assert set(points["group"]) == {"mars (synthetic) on cpu: A", "mars (synthetic) on cuda: B"}
    on_a = points.filter(pl.col("group") == "mars (synthetic) on cpu: A").sort("cost")
    assert on_a["cost"].to_list() == pytest.approx([10.0, 20.0, 30.0])
    # By latency nvan (10 ms, 50 %) dominates both; by GMACs ste_nvan (0.3) and baseline (0.5) would be on the front.
    assert on_a["pareto_rank1"].to_list() == [True, False, False]
    md = (tmp_path / "out" / "benchmark.md").read_text()
    assert "min latency (ms per clip)" in md and "published" not in md.lower()
    fig, _ = draw(points, None, "latency")
    labels = {ax.get_xlabel() for ax in fig.axes}
    assert any("on cpu: A" in x and "ms per clip" in x for x in labels) and any("on cuda: B" in x for x in labels)


def test_report_on_gmacs_per_tracklet(tmp_path):
    """Dense evaluation multiplies a clip's GMACs by the clips per tracklet, and can reorder the front."""
    paths = []
    for i, (label, gmacs, rank1, clips) in enumerate([("baseline", 0.5, 0.4, 1.0), ("nvan", 0.3, 0.5, 4.0)]):
        paths.append(tmp_path / f"{label}.json")
        paths[-1].write_text(json.dumps(make_record(label, gmacs=gmacs, rank1=rank1, clips=clips,
                                                    finished=f"2026-11-30T10:0{i}:00Z")))
    _, per_clip, _ = build_report(tmp_path / "a", records=paths)
    _, per_tracklet, _ = build_report(tmp_path / "b", records=paths, axis="gmacs_tracklet")
    assert per_clip.sort("label")["pareto_rank1"].to_list() == [False, True]  # nvan is cheaper per clip
    assert per_tracklet.sort("label")["cost"].to_list() == pytest.approx([0.5, 1.2])
    assert per_tracklet.sort("label")["pareto_rank1"].to_list() == [True, True]
    fig, _ = draw(per_tracklet, None, "gmacs_tracklet")
    assert "GMACs per test tracklet" in fig.axes[0].get_xlabel() and "chunk_first, dense" in fig.axes[0].get_xlabel()
