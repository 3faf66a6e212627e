"""Ray Tune sweeps of accuracy against cost over non-local placement, reduction and sampling (python -m harness.sweep).

Each Tune trial is a small driver holding one `trial_driver` custom resource and no CPU. It
resolves its point of the search space against the trial config, rejects infeasible points
before any training (an MLflow run with nvan.status=infeasible), counts the candidate's MACs
on the meta device, then runs `harness.train.fit`: a Ray Train job with its own workers and
resources, tracked as an MLflow run nested under the sweep's. `SweepReport` forwards each
epoch to Tune with both objectives added, so Optuna (max accuracy, min GMACs) and ASHA (early
stopping on accuracy) see them. The cost objective is GMACs, or (sweep.cost_objective: latency)
the latency each trial measures before training, with one of its workers' resources on the
cluster, so on the device it trains on. With sweep.seeds: adaptive the trials that trained fully then race
for more seeds in the same Ray session (harness.sweep.race). The driver then closes the trials' runs, marks the
Pareto front and writes reports/sweeps/<name>/results.parquet.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from mlflow.exceptions import MlflowException
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import tune

from harness import preemption, storage
from harness.errors import UserError
from harness.echo import short
from harness.config import Config, MlflowConfig
from harness.sweep_params import SweepConfig
from harness.params import flatten, override
from harness.io import atomic_path, check_writable
from harness.redact import redact
from harness.results.tracking import close_run, connect, git_commit, log_metrics, run_tags, set_tags, start_run
from harness.train.plan import check_inputs
from harness.train.seeds import SeedsInterrupted, close_stopped
from harness.cluster import check_resources, ray_session
from harness.sweep.space import cost_key, expected_trials, scheduler_for, search_setup, trial_base
from harness.sweep.callbacks import TrialEnds
from harness.sweep.race import race_trials
from harness.sweep.table import close_trials
from harness.sweep.trainable import run_trial

log = logging.getLogger("harness.sweep")

STATE_FILE = "nvan-sweep.json"  # beside Tune's experiment state: the config and parent run to resume with


@dataclass(frozen=True)
class SweepOutcome:
    """A sweep's results table (one row per trial), where it was written, its MLflow parent, completeness."""

    name: str
    results: pl.DataFrame
    path: Path
    parent_run_id: str
    complete: bool
    seconds: float


class SweepState(BaseModel):
    """nvan-sweep.json: the config a sweep started with (its URIs' credentials redacted) and its MLflow parent run."""

    model_config = ConfigDict(extra="forbid")
    config: Config
    parent_run_id: str = Field(pattern=r"^[0-9a-f]{32}$")


# Given anew on every resume: where Ray runs, and the URIs whose credentials the saved state does not keep.
RESUME_FROM_COMMAND_LINE = ("ray.address", "ray.storage_path", "mlflow.tracking_uri")


def read_state(location: str) -> SweepState:
    """The saved sweep state at `location`; UserError naming the file and what is wrong with it."""
    fix = ("it was written by harness.sweep when the sweep started and is not meant to be edited; restore it, or start "
           "the sweep again under a new --name")
    try:
        return SweepState.model_validate_json(storage.read_text(location))
    except UnicodeDecodeError as e:
        raise UserError(f"sweep state {redact(location)} is not UTF-8 text ({e.reason}); {fix}") from None
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'the file'}: {err['msg']}"
                             for err in e.errors(include_url=False)[:5])
        raise UserError(f"sweep state {redact(location)} is not a valid sweep state ({short(problems)}); {fix}") from None


def _resumed(config: Config, base: Config, name: str) -> tuple[Config, str]:
    """The config and MLflow parent run a sweep being resumed started with, from its saved state; UserError for a
    missing or damaged state, or a storage or tracking URI other than the sweep's."""
    folder = storage.join(base.ray.storage_path, name)
    state = storage.join(folder, STATE_FILE)
    if not storage.exists(state):
        raise UserError(f"--resume: no sweep {name!r} at {redact(folder)}; check --name and ray.storage_path")
    saved = read_state(state)
    now, then = flatten(config), flatten(saved.config)
    given = {key: now[key] for key in RESUME_FROM_COMMAND_LINE}
    for key in RESUME_FROM_COMMAND_LINE[1:]:
        was = then[key]
        if was is not None and redact(given[key]) != was:
            raise UserError(f"--resume {name}: the sweep was started with {key} = {was}, not {redact(given[key])}; "
                            f"resume it with the same {key}")
    # The sweep continues as it started; only where Ray runs may change.
    config = override(saved.config, given, "--resume")
    client, _ = connect(base.mlflow.tracking_uri, base.mlflow.experiment)
    try:
        set_tags(client, saved.parent_run_id, {"nvan.status": "running"})
    except MlflowException:
        raise UserError(f"sweep state {redact(state)} names MLflow run {saved.parent_run_id}, which the store "
                        f"{redact(base.mlflow.tracking_uri)} does not hold; resume with the mlflow.tracking_uri the "
                        f"sweep started with") from None
    return config, saved.parent_run_id


def _start(config: Config, name: str, resume: bool) -> tuple[Config, str]:
    """The sweep's config and MLflow parent run: new ones, or those saved by the sweep being resumed."""
    base = trial_base(config)  # config errors before anything is created
    folder = storage.join(base.ray.storage_path, name)
    state = storage.join(folder, STATE_FILE)
    if resume:
        return _resumed(config, base, name)
    if storage.exists(folder):
        raise UserError(f"sweep {name!r} already exists at {redact(folder)}; resume it with --resume --name {name}, "
                        f"or choose another --name")
    client, experiment_id = connect(base.mlflow.tracking_uri, base.mlflow.experiment)
    manifest = check_inputs(base).manifest
    parent = start_run(client, experiment_id, name, flatten(config) | {
        "git_commit": git_commit(), "dataset.manifest_hash": manifest.get("content_hash", "unknown")},
        run_tags("sweep", name, base, **{"nvan.ray_run": name,
                                         "dataset.synthetic": str(manifest.get("synthetic", False)).lower()}),
        command="python -m harness.sweep")
    flat = flatten(config)
    recorded = override(config, {k: redact(flat[k]) if isinstance(flat[k], str) else flat[k]
                                 for k in RESUME_FROM_COMMAND_LINE[1:]}, "sweep state")
    storage.write_text(state, SweepState(config=recorded, parent_run_id=parent).model_dump_json(indent=2))
    return config, parent


def _check_cluster(base: Config, max_concurrent: int) -> None:
    import ray

    check_resources(base.ray)
    have = ray.cluster_resources()
    if have.get("trial_driver", 0) < 1:
        raise UserError(
            "the Ray cluster has no 'trial_driver' resource, which each sweep trial's driver holds; start the "
            f"head with `ray start --head --resources='{{\"trial_driver\": {max_concurrent}}}'` "
            f"(one per concurrent trial)"
        )
    per_trial = base.ray.num_workers * base.ray.cpus_per_worker
    if max_concurrent * per_trial > have.get("CPU", 0):
        log.warning("sweep.max_concurrent = %d trials x %d CPUs (ray.num_workers x ray.cpus_per_worker) exceed the "
                    "cluster's %g CPUs: trials will wait for each other", max_concurrent, per_trial, have.get("CPU", 0))


def run_sweep(config: Config, resume: bool = False) -> SweepOutcome:
    """Run (or resume) the sweep `config.sweep` on Ray Tune; return its results table with Pareto flags."""
    name = config.sweep.name
    if not name:
        if resume:
            raise UserError("--resume needs the sweep's name: pass --name NAME (or set sweep.name)")
        name = f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    clean, credentials = storage.split_credentials(config.ray.storage_path)
    if credentials:  # Tune stores its storage URI: the keys travel in the environment instead
        config = override(config, {"ray.storage_path": clean}, "ray.storage_path")
        os.environ.update(credentials)
    start, base = time.perf_counter(), trial_base(config)
    check_inputs(base)  # user errors before Ray starts or anything is recorded
    check_writable(config.report.out_dir / "sweeps" / name / "results.parquet")
    if resume:  # a missing or damaged sweep state, before Ray starts
        _resumed(config, base, name)
    # MLflow and results.parquet are the records; Tune's own CSV/JSON/TensorBoard loggers only
    # duplicate them, and TensorBoard warns on the NaN objective of not yet evaluated epochs.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    stopped = races = None
    with ray_session(config.ray.address, num_cpus=os.cpu_count(), log_to_driver=config.ray.log_to_driver,
                     resources={"trial_driver": config.sweep.max_concurrent}, env=credentials):
        _check_cluster(base, config.sweep.max_concurrent)
        config, parent_run_id = _start(config, name, resume)
        base, sweep = trial_base(config), config.sweep
        experiment = storage.join(base.ray.storage_path, name)
        tuner = _tuner(config, base, name, parent_run_id, resume)
        try:
            tuner.fit()
        except Exception:  # noqa: BLE001 - a SIGTERM to the process group kills Ray under Tune; the state is saved
            if not preemption.requested():
                raise
            log.warning("Ray went down with the preemption; the trials are closed from their records")
        trials = _saved_trials(experiment)
        if sweep.adaptive and _tune_done(trials, sweep):
            try:
                races = race_trials(base, trials, name, parent_run_id)
            except SeedsInterrupted as stop:
                stopped = stop
    if stopped is not None:  # with Ray down, no seed's controller can record an epoch over its closed record
        close_stopped(base.mlflow, stopped)
    results, complete = close_trials(base, trials, name, parent_run_id, races)  # a race not run is replayed
    # Interrupted before the search created every trial: more to run, whatever the trials say.
    complete &= len(trials) >= expected_trials(sweep)
    path = config.report.out_dir / "sweeps" / name / "results.parquet"
    with atomic_path(path) as tmp:
        results.write_parquet(tmp)
    close_parent(base.mlflow, parent_run_id, results, path, complete)
    return SweepOutcome(name, results, path, parent_run_id, complete, time.perf_counter() - start)


def _tuner(config: Config, base: Config, name: str, parent_run_id: str, resume: bool) -> tune.Tuner:
    """The sweep's Tuner: restored from its experiment folder when resuming one, else new over the search space."""
    sweep, experiment = config.sweep, storage.join(base.ray.storage_path, name)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=base.model_dump(mode="json"), sweep_name=name,
                             parent_run_id=parent_run_id),
        {"cpu": 0, "trial_driver": 1})
    if resume and tune.Tuner.can_restore(experiment):
        return tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=True)
    search_alg, space = search_setup(sweep, config.seed)
    return tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler_for(sweep, base.train.epochs),
                                    num_samples=sweep.num_samples, max_concurrent_trials=sweep.max_concurrent,
                                    reuse_actors=False),
        run_config=tune.RunConfig(name=name, storage_path=base.ray.storage_path, verbose=0,
                                  callbacks=[TrialEnds(sweep.metric, base.train.epochs, cost_key(sweep))]))


def _tune_done(trials: list, sweep: SweepConfig) -> bool:
    """Whether Tune ran every trial of the search to its end (not interrupted or preempted): then the race starts."""
    ended = all(t.status in ("TERMINATED", "ERROR") for t in trials)
    return ended and len(trials) >= expected_trials(sweep) and not preemption.requested()


def _saved_trials(experiment: str) -> list:
    """The trials of the experiment state on disk."""
    # The experiment state on disk was written before Tune's cleanup marked interrupted trials TERMINATED.
    # Tune's own result files are off (above), so it would warn that no trial has metrics: the records hold them.
    analysis_log = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = analysis_log.level
    analysis_log.setLevel(logging.ERROR)
    try:
        return tune.ExperimentAnalysis(experiment).trials
    finally:
        analysis_log.setLevel(level)


EXIT_CODES = {"finished": 0, "failed": 1, "interrupted": 130, "preempted": preemption.EXIT_CODE}


def sweep_status(results: pl.DataFrame, complete: bool) -> str:
    """The sweep's own status: interrupted or preempted (SIGTERM; trials left to run), failed (a trial failed), or
    finished."""
    if not complete:
        return "preempted" if preemption.requested() else "interrupted"
    return "failed" if (results["status"] == "failed").any() else "finished"


def close_parent(mlflow: MlflowConfig, run_id: str, results: pl.DataFrame, path: Path, complete: bool) -> None:
    """Log the sweep's counts and results table to its MLflow run; close it as the sweep's status."""
    client, _ = connect(mlflow.tracking_uri, mlflow.experiment)
    counts = {f"sweep.{s.replace('-', '_')}": results.filter(pl.col("status") == s).height
              for s in ("finished", "early-stopped", "infeasible", "failed", "interrupted", "preempted")}
    log_metrics(client, run_id, counts | {"sweep.trials": results.height, "sweep.pareto": int(results["pareto"].sum())})
    client.log_artifact(run_id, str(path))
    close_run(client, run_id, sweep_status(results, complete))
