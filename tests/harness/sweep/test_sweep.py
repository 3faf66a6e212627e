"""Sweeps: search space, Pareto front, and an interrupted 3-trial sweep on real Ray Tune and MLflow."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
from mlflow import MlflowClient

from harness.errors import ConfigError
from harness.params import load_config
from harness.results.records import RunRecord, read_record
from harness import storage
from harness.sweep.space import Candidate, resolve, search_setup, trial_base
from harness.sweep.table import trial_outcome

ROOT = Path(__file__).resolve().parents[3]


def dominated(acc: list[float], cost: list[float]) -> list[bool]:
    """Brute force: a point is dominated if another is at least as good on both and better on one."""
    return [any(a2 >= a and c2 <= c and (a2 > a or c2 < c) for a2, c2 in zip(acc, cost)) for a, c in zip(acc, cost)]


def test_candidate_applies_stripes_to_non_local_stages_and_keeps_the_rest(tiny_config):
    base = tiny_config("model.preset=nvan", "model.nl_window=2")
    candidate = resolve(base, {"placement": "p0203", "stripes": 4, "temporal_pool": "23", "frames": 8})
    assert candidate == Candidate(non_local=(0, 2, 0, 3), stripes=(0, 4, 0, 4), nl_window=2,
                                  temporal_pool_after=(2, 3), frames=8, sampler=base.train.sampler,
                                  stride=base.train.stride, lr=base.train.lr, width=base.model.width)
    assert candidate.label(["placement", "stripes", "lr"]) == f"p0203 s4 w2 tp23 T8 lr={base.train.lr:g}"
    assert resolve(base, {"window": 0}).non_local == (0, 2, 3, 0)  # nvan's placement when not searched


@pytest.mark.parametrize("override, key", [
    ("sweep.space.placement=[p0230, p0290]", "sweep.space.placement"),
    ("sweep.space.placement=[0230]", "sweep.space.placement"),
    ("sweep.space.temporal_pool=[none, 24]", "sweep.space.temporal_pool"),
    ("sweep.space.stripes=[0, -4]", "sweep.space.stripes.1"),
    ("sweep.space.frames=[]", "sweep.space.frames"),
    ("sweep.space.window=[2, 2]", "sweep.space.window"),
    ("sweep.space.sampler=[dense]", "sweep.space.sampler.0"),
    ("sweep.space.colour=[red]", "sweep.space.colour"),
    ("sweep.search=bayes", "sweep.search"),
])
def test_invalid_search_space_entries_name_the_key(override, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(ROOT / "params.yaml", [override])


def test_trial_overrides_are_validated_with_their_key(tiny_config):
    with pytest.raises(ConfigError, match=r"sweep\.trial: train\.epochs = 0"):
        trial_base(tiny_config("sweep.trial.train.epochs=0"))
    with pytest.raises(ConfigError, match="sweep.grace_period = 1 epochs comes before"):
        trial_base(tiny_config("sweep.grace_period=1", "sweep.trial.eval.every=2"))
    with pytest.raises(ConfigError, match="leaves ASHA nothing to stop"):
        trial_base(tiny_config("sweep.trial.train.epochs=1"))
    assert trial_base(tiny_config("sweep.trial.train.epochs=1", "sweep.scheduler=fifo")).train.epochs == 1
    with pytest.raises(ConfigError, match="cost.measure is false; set cost.measure: true"):
        trial_base(tiny_config("sweep.cost_objective=latency", "cost.measure=false"))


TUNER_ROUND_TRIP = """
import sys
from ray import tune
from harness.params import load_config
from harness.sweep.space import search_setup
from harness.cluster import ray_session

def trainable(params):
    tune.report({"best.map": len(str(params)) / 100, "gmacs": float(len(params)), "epochs": 1})

with ray_session(None, num_cpus=1):
    for search in sys.argv[2:]:
        config = load_config("params.yaml", [search, "sweep.num_samples=2",
                                             "sweep.space={placement: [p0000, p0200], frames: [4, 8]}"])
        search_alg, space = search_setup(config.sweep, config.seed)
        name = search.replace("=", "-")
        tune.Tuner(trainable, param_space=space, run_config=tune.RunConfig(name=name, storage_path=sys.argv[1], verbose=0),
                   tune_config=tune.TuneConfig(search_alg=search_alg, num_samples=config.sweep.num_samples)).fit()
        results = tune.Tuner.restore(f"{sys.argv[1]}/{name}", trainable, resume_unfinished=True,
                                     resume_errored=True).fit()
        assert not results.errors and len(results) >= 2, (search, len(results), results.errors)
        print(search, "trials", len(results))
"""
SEARCHES = ["sweep.optuna_sampler=nsga2", "sweep.optuna_sampler=tpe", "sweep.search=random", "sweep.search=grid"]


@pytest.mark.slow(seconds=60)
def test_every_search_runs_through_tune_and_restores(tmp_path):
    """Each searcher as params.yaml builds it goes through tune.Tuner, which pickles it, and Tuner.restore.

    Optuna 5.1's NSGA-II sampler holds a lock that Tune could not pickle: the default sweep died before its
    first trial while the suite only constructed the searcher.
    """
    done = subprocess.run([sys.executable, "-c", TUNER_ROUND_TRIP, str(tmp_path), *SEARCHES],
                          capture_output=True, text=True, cwd=ROOT, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [line.split()[0] for line in done.stdout.splitlines() if line.startswith("sweep.")] == SEARCHES


def test_search_algorithms(tiny_config):
    config = tiny_config("sweep.space={placement: [p0000, p0200], frames: [2, 4]}")
    optuna, space = search_setup(config.sweep, seed=0)
    assert optuna.metric == ["best.map", "gmacs"] and optuna.mode == ["max", "min"]
    optuna, _ = search_setup(tiny_config("sweep.cost_objective=latency").sweep, seed=0)
    assert optuna.metric == ["best.map", "latency_ms"] and optuna.mode == ["max", "min"]
    assert set(space) == {"placement", "frames"}
    grid, space = search_setup(tiny_config("sweep.search=grid").sweep, seed=0)
    assert grid is None and all("grid_search" in v for v in space.values())


@pytest.mark.parametrize("tune_status, record_status, epochs, infeasible, expected", [
    ("TERMINATED", "finished", 4, False, "finished"),
    ("RUNNING", "finished", 4, False, "finished"),      # finished just before an interrupt reached Tune's state
    ("PENDING", "finished", 4, False, "finished"),
    ("RUNNING", "running", 4, False, "finished"),       # Ctrl-C right after its last epoch, before its bookkeeping
    ("TERMINATED", "running", 2, False, "early-stopped"),  # ASHA stopped it (never at the last epoch)
    ("RUNNING", "running", 2, False, "interrupted"),    # Ctrl-C during an epoch or between epochs
    ("PENDING", None, 0, False, "interrupted"),         # never started
    ("ERROR", "running", 2, False, "failed"),
    ("ERROR", None, 0, False, "failed"),
    ("TERMINATED", None, 0, True, "infeasible"),
])
def test_trial_outcome_follows_the_record(tune_status, record_status, epochs, infeasible, expected):
    # A committed record as the first seed of a 4-epoch trial, at `epochs` epochs trained.
    good = json.loads((ROOT / "reports" / "runs" / "nvan" / "seed0.json").read_text())
    config = good["config"] | {"train": good["config"]["train"] | {"epochs": 4}}
    record = None if record_status is None else RunRecord.model_validate(
        good | {"status": record_status, "epochs": epochs, "config": config})
    assert trial_outcome(tune_status, record, infeasible) == expected


def test_an_infeasible_trial_interrupted_before_tune_heard_of_it(tiny_config):
    # Ctrl-C while Tune ran the infeasible point: no last result, state RUNNING or PENDING. The table
    # must still call it infeasible (and record it in MLflow), not try to cost it and stop with an error.
    from harness.sweep.space import trial_base
    from harness.sweep.table import close_trials
    from harness.results.tracking import connect, start_run

    base = trial_base(tiny_config("sweep.search=grid", "sweep.space={placement: [p0200], stripes: [16]}"))
    client, experiment_id = connect(base.mlflow.tracking_uri, base.mlflow.experiment)
    parent = start_run(client, experiment_id, "s", {}, {"nvan.kind": "sweep"})
    trials = [SimpleNamespace(trial_id=f"abc_0000{i}", status=status, last_result={}, experiment_tag=f"{i}_x",
                              config={"placement": "p0200", "stripes": 16}) for i, status in enumerate(["RUNNING",
                                                                                                        "PENDING"])]
    results, complete = close_trials(base, trials, "s", parent)
    assert complete and results["status"].to_list() == ["infeasible", "infeasible"]
    assert all("stripes[1] = 16" in reason for reason in results["reason"])
    for run_id in results["mlflow_run_id"]:
        run = client.get_run(run_id)
        assert run.data.tags["nvan.status"] == "infeasible" and run.data.tags["mlflow.parentRunId"] == parent


def test_example_cluster_params_are_valid():
    config = trial_base(load_config(ROOT / "examples" / "sweep-8gpu.yaml"))
    assert config.ray.use_gpu and config.ray.address == "auto" and config.sweep.max_concurrent == 8


@pytest.mark.slow
def test_cli_rejects_an_invalid_space_with_exit_2(tiny_sets):
    proc = subprocess.run([sys.executable, "-m", "harness.sweep", *tiny_sets, "--set", "sweep.space.placement=[p0900]"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "sweep.space.placement" in proc.stderr and "Traceback" not in proc.stderr


def trial_runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name("nvan-bench").experiment_id
    return [r for r in client.search_runs([experiment]) if r.data.tags.get("nvan.kind") == "trial"]


@pytest.mark.slow(seconds=200)
def test_interrupted_sweep_resumes_and_records_every_trial(tiny_sets, tmp_path, s3_storage):
    """3 grid points, one infeasible, two seeds each; stopped (SIGINT) after the first trial finishes, then resumed.

    The cost objective is the latency each trial measures on its own worker resources.
    ray.storage_path is an S3 URI (a local moto server): Tune's experiment, the sweep's state, the
    trials' Train runs and run records live in the bucket, and --resume finds them there.
    """
    args = [sys.executable, "-m", "harness.sweep", *tiny_sets, "--set", f"ray.storage_path={s3_storage}",
            "--set", "sweep.cost_objective=latency", "--set", "cost.measure=true", "--set", "cost.repeats=3",
            "--set", f"report.out_dir={tmp_path / 'reports'}", "--set", "sweep.search=grid",
            "--set", "sweep.space={placement: [p0200], stripes: [0, 8, 16]}",  # s16: 16 stripes > 8 rows
            "--set", "sweep.trial={train: {epochs: 2, steps_per_epoch: 2}, eval: {every: 1}}", "--set", "sweep.grace_period=1",
            "--set", "sweep.seeds=2", "--set", "report.draws=1000",
            # One trial at a time: when the first one ends, a trained one is still to come (two at once
            # can both end before the interrupt lands, and the sweep exits 0).
            "--name", "t", "--num-samples", "1", "--max-concurrent", "1"]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    try:
        done_line = next(line for line in first.stdout if re.match(r"trial t\d{3} .* (finished|stopped early):", line))
        first.send_signal(signal.SIGINT)
        rest = first.communicate(timeout=1800)[0]  # nets against a hang, not speed limits
    finally:
        first.kill()
    assert first.returncode == 130 and "--resume --name t" in rest
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    ended = {r.info.run_id: (r.data.tags["nvan.status"],
                             [m.step for m in client.get_metric_history(r.info.run_id, "loss")])
             for r in trial_runs(client) if r.data.tags["nvan.status"] in ("finished", "early-stopped")}
    assert ended, "the trial that printed its line should be closed in MLflow"

    second = subprocess.run(args + ["--resume"], capture_output=True, text=True, cwd=ROOT, timeout=1800)
    assert second.returncode == 0, second.stderr[-3000:]
    done_label = done_line.split(" finished")[0].split(" stopped early")[0].removeprefix("trial ")
    assert f"trial {done_label} " not in second.stdout  # not run again

    runs = trial_runs(client)
    sweeps = [r for r in client.search_runs([runs[0].info.experiment_id]) if r.data.tags.get("nvan.kind") == "sweep"]
    assert len(sweeps) == 1 and sweeps[0].data.tags["nvan.status"] == "finished"
    # Two seeds of each of the two trained trials, and the infeasible one recorded once.
    assert len(runs) == 5 and {r.data.tags["mlflow.parentRunId"] for r in runs} == {sweeps[0].info.run_id}
    # A trial that ended just before the interrupt may still be unfinished in Tune's saved state; Tune
    # then restores it and its Train run resumes at the final checkpoint: no epoch may be trained again.
    for run_id, (status, steps) in ended.items():
        assert client.get_run(run_id).data.tags["nvan.status"] == status and steps[0] == 0
        assert [m.step for m in client.get_metric_history(run_id, "loss")] == steps == sorted(set(steps))
    statuses = sorted(r.data.tags["nvan.status"] for r in runs)
    assert statuses.count("infeasible") == 1 and set(statuses) <= {"finished", "early-stopped", "infeasible"}
    infeasible = next(r for r in runs if r.data.tags["nvan.status"] == "infeasible")
    assert "p0200 s16" in infeasible.data.tags["nvan.label"]
    assert "stripes[1] = 16" in infeasible.data.tags["nvan.reason"]

    results = pl.read_parquet(tmp_path / "reports" / "sweeps" / "t" / "results.parquet")
    assert results.height == 3 and results["trial_id"].n_unique() == 3
    # One truth: each trained trial's row, run record and MLflow run agree on epochs and best score.
    assert storage.exists(storage.join(s3_storage, "t", "nvan-sweep.json"))
    assert len(storage.list_dirs(storage.join(s3_storage, "t", "train"))) == 4  # two trained trials, two seeds each
    assert not (ROOT / "s3:").exists()  # nothing in a local folder named after the URI
    paths = [storage.join(s3_storage, "t", "records", f"{trial_id}.json") for trial_id in results["trial_id"]]
    records = {r.run.mlflow_run_id: r for r in map(read_record, filter(storage.exists, paths))}
    for row in results.filter(pl.col("status") != "infeasible").iter_rows(named=True):
        record, run = records[row["mlflow_run_id"]], client.get_run(row["mlflow_run_id"])
        assert record.status == row["status"] == run.data.tags["nvan.status"]
        assert record.epochs == row["epochs"] == len(client.get_metric_history(row["mlflow_run_id"], "loss"))
        assert record.scores["mars-official"].map == run.data.metrics["best.map"]
        # The table's objective is the mean over the trial's seeds, with its interval over seeds and queries.
        second_seed = read_record(storage.join(s3_storage, "t", "records", f"{row['trial_id']}-seed1.json"))
        assert second_seed.config.seed == record.config.seed + 1 and second_seed.status == row["status"]
        maps = [record.scores["mars-official"].map, second_seed.scores["mars-official"].map]
        assert row["seeds"] == 2 and row["map"] == pytest.approx(np.mean(maps), abs=1e-15)
        assert row["map_std"] == pytest.approx(np.std(maps, ddof=1)) and row["map_lo"] <= row["map"] <= row["map_hi"]
        assert 0 <= row["p_front_map"] <= 1
    # The table names each trial's first seed's run; the others' runs are nested beside them.
    assert set(results["mlflow_run_id"]) <= {r.info.run_id for r in runs}
    points = results.filter(pl.col("status").is_in(["finished", "early-stopped"]))
    assert points.height == 2 and points["map"].is_not_null().all()
    for row in points.iter_rows(named=True):
        latency = records[row["mlflow_run_id"]].written()["cost"]["latency"]  # as written: threads included
        assert row["latency_ms"] == 1e3 * latency["median_s"] and row["latency_device"] == latency["device"]
        assert latency["threads"] == 1 and latency["device"].startswith("cpu: ")
    # The front is on measured latency, not GMACs.
    expected = [not d for d in dominated(points["map"].to_list(), points["latency_ms"].to_list())]
    assert points["pareto"].to_list() == expected and not results.filter(status="infeasible")["pareto"].any()
    assert all(label in second.stdout for label in points.filter("pareto")["label"])
    assert "vs min latency, ms per clip" in second.stdout and "latency measured on: cpu: " in second.stdout


def test_a_sweep_with_failed_trials_says_so(tiny_config, tmp_path):
    from harness.sweep.__main__ import format_front
    from harness.sweep.driver import EXIT_CODES, SweepOutcome, close_parent, sweep_status
    from harness.results.tracking import connect, start_run

    config = tiny_config()
    client, experiment_id = connect(config.mlflow.tracking_uri, config.mlflow.experiment)
    results = pl.DataFrame({"label": ["t000 p0000", "t001 p0200"], "status": ["finished", "failed"],
                            "map": [0.3, None], "rank1": [0.4, None], "gmacs": [0.1, 0.2], "gmacs_input": [0.01, 0.02],
                            "epochs": [2, 1], "mlflow_run_id": ["a" * 32, "b" * 32], "pareto": [True, False],
                            "seeds": [2, 0], "map_lo": [0.25, None], "map_hi": [0.35, None], "rank1_lo": [0.3, None],
                            "rank1_hi": [0.5, None], "p_front_map": [1.0, None]})
    assert sweep_status(results, complete=True) == "failed" and EXIT_CODES["failed"] == 1
    assert sweep_status(results, complete=False) == "interrupted"
    assert sweep_status(results.head(1), complete=True) == "finished"
    parent = start_run(client, experiment_id, "s", {}, {"nvan.kind": "sweep"})
    (tmp_path / "results.parquet").write_bytes(b"")
    close_parent(config.mlflow, parent, results, tmp_path / "results.parquet", complete=True)
    run = client.get_run(parent)
    assert run.data.tags["nvan.status"] == "failed" and run.info.status == "FAILED"
    assert run.data.metrics["sweep.failed"] == 1
    text = format_front(SweepOutcome("s", results, tmp_path / "results.parquet", parent, True, 1.0), "map",
                        "mars-official")
    assert "FAILED: trial t001 p0200" in text and "30.0 ± 5.0" in text


def listening_addresses(pid: int) -> set[str]:
    """The addresses that process `pid` and its descendants listen on (TCP)."""
    import psutil

    family = {pid} | {p.pid for p in psutil.Process(pid).children(recursive=True)}
    return {c.laddr.ip for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in family}


def bucket_texts(s3_server: str, prefix: str) -> dict[str, bytes]:
    """Every object under `prefix` of the test bucket: Tune's experiment state, the sweep's and the trials' files."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=f"http://{s3_server}", aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="nvan-runs", Prefix=prefix)
            for o in page.get("Contents", [])]
    return {key: s3.get_object(Bucket="nvan-runs", Key=key)["Body"].read() for key in keys}


@pytest.mark.slow(seconds=240)
def test_the_default_sweep_is_preempted_and_resumed(tiny_sets, tmp_path, s3_server):
    """params.yaml's own search (Optuna NSGA-II with ASHA) end to end: SIGTERM to the sweep's driver (as a pod stop
    sends it to the container's first process) once a trial has finished exits 143 with every trial closed; --resume
    completes the sweep and a second --resume of the finished sweep runs nothing. While it runs, a local Ray
    listens on loopback only; nothing it stores (Tune's experiment state included) or prints holds the storage
    URI's secret."""
    secret = "nvanPr0beSecret"
    storage_uri = (f"s3://probekey:{secret}@nvan-runs/{tmp_path.name}?endpoint_override={s3_server}&scheme=http"
                   f"&region=us-east-1")
    args = [sys.executable, "-m", "harness.sweep", *tiny_sets, "--set", f"ray.storage_path={storage_uri}",
            "--set", f"report.out_dir={tmp_path / 'reports'}", "--set", "sweep.grace_period=1",
            "--set", "sweep.trial={train: {epochs: 3, steps_per_epoch: 2}, eval: {every: 1}}",
            "--name", "d", "--num-samples", "3", "--max-concurrent", "1"]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                             start_new_session=True)
    try:
        done_line = next(line for line in first.stdout if re.match(r"trial t\d{3} .* (finished|stopped early|infeasible)",
                                                                 line))
        listening = listening_addresses(first.pid)
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=1800)  # a net against a hang, not a speed limit
    finally:
        first.kill()
    assert listening and listening <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, listening
    assert first.returncode == 143, err[-3000:]
    assert "--resume --name d" in out + err and "Traceback" not in err
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert {r.data.tags["nvan.status"] for r in trial_runs(client)} <= {"finished", "early-stopped", "infeasible",
                                                                          "preempted"}
    printed = [done_line, out, err]

    second = subprocess.run(args + ["--resume"], capture_output=True, text=True, cwd=ROOT, timeout=1800)
    assert second.returncode == 0, second.stderr[-3000:]
    runs = trial_runs(client)
    sweep = next(r for r in client.search_runs([runs[0].info.experiment_id]) if r.data.tags.get("nvan.kind") == "sweep")
    assert sweep.data.tags["nvan.status"] == "finished"
    assert {r.data.tags["nvan.status"] for r in runs} <= {"finished", "early-stopped", "infeasible"}
    results = pl.read_parquet(tmp_path / "reports" / "sweeps" / "d" / "results.parquet")
    assert results.height == 3 and set(results["status"]) <= {"finished", "early-stopped", "infeasible"}

    third = subprocess.run(args + ["--resume"], capture_output=True, text=True, cwd=ROOT, timeout=1800)
    assert third.returncode == 0, third.stderr[-3000:]
    assert not re.search(r"^trial t\d{3} ", third.stdout, re.MULTILINE)  # nothing trained again
    assert pl.read_parquet(tmp_path / "reports" / "sweeps" / "d" / "results.parquet").height == 3
    printed += [second.stdout, second.stderr, third.stdout, third.stderr]

    stored = bucket_texts(s3_server, tmp_path.name)
    assert any("experiment_state" in key for key in stored) and any(key.endswith("nvan-sweep.json") for key in stored)
    leaks = [key for key, body in stored.items() if secret.encode() in body]
    leaks += [str(p) for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert not leaks and not any(secret in text for text in printed)
