"""Configurations trained once per seed, side by side in one Ray session: a run record per seed.

The one way seeds train in rounds: --all-seeds (one set), a round of --until-decided (both arms) and a
round of a sweep's race (the undecided candidates). Each seed's training job is driven by a zero-CPU
Ray task on the driver's node (as a sweep trial's driver is), so the seeds share one Ray start-up and
run as many at once as the cluster has room for: on a 2-core machine with one thread per worker, two
seeds train while the others wait. A set's cost is measured once, before any of its seeds trains, and
shared: its seeds train the same model.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mlflow import MlflowClient

from datasets.progress import Progress
from harness import storage
from harness.config import Config, MlflowConfig
from harness.params import flatten, override
from harness import preemption
from harness.errors import UserError
from harness.prepared import PreparedDataset
from harness.results.records import read_record, run_config, write_record
from harness.results.tracking import close_run, connect, find_run, run_tags, set_tags, start_run, tracking_uri
from harness.train.driver import TrainingInterrupted, fit
from harness.train.plan import absolute_paths, check_inputs
from harness.train.outcome import TrainResult
from harness.measure.run_cost import run_cost
from harness.cluster import worker_resources

log = logging.getLogger("harness.train")


def seed_record(out_dir: Path | str, seed: int) -> Path:
    """Where the run record of `seed` goes in a seeds folder: <out_dir>/seed<seed>.json."""
    return Path(out_dir) / f"seed{seed}.json"


SEED_SET_TAG = "nvan.seed_set"  # on a seed set's parent run and on each of its seeds' runs: the --all-seeds name


def seed_run_name(name: str, seed: int) -> str:
    """The Ray run (and MLflow run) name of one seed of the run `name`."""
    return f"{name}-seed{seed}"


def train_seed(config: Config, name: str, record_to: str, resume: bool, *, parent_run_id: str,
               tags: dict[str, str], cost: dict[str, Any] | None, label: str | None = None, kind: str = "train",
               callbacks: list | None = None, prepared: PreparedDataset | None = None) -> TrainResult:
    """Train one seed of a set (`config.seed`) as its own Ray Train run `name`, tracked as an MLflow run nested in
    the set's, writing its record to `record_to` as it trains: the one way --all-seeds and a sweep's candidate
    train a seed. With `resume` a seed whose run folder exists continues from its checkpoint; one stopped before
    its Train run began starts over, without the empty MLflow run it left."""
    again = resume and storage.is_dir(storage.join(storage.absolute(config.ray.storage_path), name))
    if resume and not again:
        client, experiment_id = connect(tracking_uri(config.mlflow.tracking_uri), config.mlflow.experiment)
        if orphan := find_run(client, experiment_id, "nvan.ray_run", name):
            client.delete_run(orphan)
    return fit(config, name=None if again else name, resume=name if again else None, parent_run_id=parent_run_id,
               tags=tags, progress=False, tune_callbacks=callbacks, record_to=record_to, label=label, kind=kind,
               cost=cost, prepared=prepared)


def _fit_seed(config: dict[str, Any], cwd: str, name: str, resume: bool, record_to: str, cost: dict[str, Any],
              run: dict[str, Any], prepared: PreparedDataset) -> TrainResult:
    """The driver of one seed's training job, as a Ray task on the driver's node: `train_seed` in the driver's
    working directory (params paths are relative to it, and the record keeps them as given); `run` holds the MLflow
    parent run id, tags, label and kind of the seed's run."""
    before = os.getcwd()
    os.chdir(cwd)
    try:
        return train_seed(Config.model_validate(config), name, record_to, resume, parent_run_id=run["parent_run_id"],
                          tags=run["tags"] | {"nvan.ray_run": name}, cost=cost, label=run["label"], kind=run["kind"],
                          prepared=prepared)
    finally:
        os.chdir(before)


class SeedsInterrupted(TrainingInterrupted):
    """Ctrl-C or SIGTERM during --all-seeds (or a round of --until-decided): `ray_run` names what --resume takes,
    `stopped` maps the Ray run of each seed that had not finished to its record, `seed_set_run_ids` are the sets'
    MLflow parent runs. Close them with `close_stopped` once Ray is shut down."""

    def __init__(self, name: str, preempted: bool, stopped: dict[str, Path | str],
                 seed_set_run_ids: list[str]) -> None:
        super().__init__(name, preempted)
        self.stopped, self.seed_set_run_ids = stopped, seed_set_run_ids


@dataclass(frozen=True)
class SeedSet:
    """One configuration to train once per seed: each seed's run is <name>-seed<k> and its record goes to
    `record(seed)` (a file, or a URI under ray.storage_path). Its runs nest in the set's own MLflow run `name`, or
    in `parent_run_id` (a sweep's run) with `tags`, `label` and `kind`; `cost` is the model's run_cost when it was
    measured already, `prepared` the checked dataset when the inputs were checked already."""

    config: Config
    seeds: list[int]
    name: str
    record: Callable[[int], Path | str]
    cost: dict[str, Any] | None = None
    prepared: PreparedDataset | None = None
    parent_run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    label: str | None = None
    kind: str = "train"


def fit_seed_sets(sets: list[SeedSet], resume: bool, name: str) -> list[list[TrainResult]]:
    """Train every seed of `sets` that has not finished (their records say so), side by side on the connected Ray
    cluster (as many at once as it holds their workers); each set's results, in seed order.

    `resume` continues the seeds whose runs stopped, from their checkpoints, and starts those that never began.
    Ctrl-C or SIGTERM raises SeedsInterrupted naming the seeds it stopped and `name`, the run to resume.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(_fit_seed).options(
        # On the driver's node: each task writes its seed's record into the driver's out_dir.
        scheduling_strategy=NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False))
    jobs = [job for index, seed_set in enumerate(sets) for job in _jobs(seed_set, index)]
    ray_config = sets[0].config.ray
    have = ray.cluster_resources()
    # As many runs at once as the cluster holds their workers (CPUs, and GPUs when they train on them).
    slots = max(1, min(int(have.get(k, 0) // (ray_config.num_workers * v)) for k, v in worker_resources(ray_config).items()))
    log.info("training %s (%d seed run(s) to train), %d at once", ", ".join(f"{s.config.model.preset} seeds {s.seeds}"
             for s in sets), len(jobs), min(slots, len(jobs)))
    client, experiment_id = connect(tracking_uri(sets[0].config.mlflow.tracking_uri), sets[0].config.mlflow.experiment)
    # A set nested in a run of its caller's (a sweep's) leaves that run to its caller; its own runs it closes.
    parents = [s.parent_run_id or open_seed_set(client, experiment_id, s.config, s.name, s.seeds) for s in sets]
    own = [parent for s, parent in zip(sets, parents) if s.parent_run_id is None]

    def start(job: _Job):
        seed_set = sets[job.set_index]
        run = {"parent_run_id": parents[job.set_index], "tags": {SEED_SET_TAG: seed_set.name} | seed_set.tags,
               "label": seed_set.label, "kind": seed_set.kind}
        return task.remote(job.config.model_dump(mode="json"), os.getcwd(), seed_run_name(seed_set.name, job.seed),
                           resume, storage.absolute(job.record), job.cost, run, job.prepared)

    results: dict[_Job, TrainResult] = {}
    try:
        # No more seeds started than the cluster can train at once: a waiting one would only hold processes.
        _wait(jobs, start, slots, max(s.config.train.epochs for s in sets), results)
    except KeyboardInterrupt:  # Ctrl-C, or a SIGTERM (Preempted, or what Ray made of it)
        stopped = {seed_run_name(sets[job.set_index].name, job.seed): job.record for job in jobs if job not in results}
        raise SeedsInterrupted(name, preemption.requested(), stopped, own) from None
    except Exception:
        for parent in own:
            close_run(client, parent, "failed")
        raise
    for parent in own:
        close_run(client, parent, "finished")
    return [[results[job] for job in jobs if job.set_index == index] for index in range(len(sets))]


@dataclass(frozen=True, eq=False)  # by identity: a job is a key of the results
class _Job:
    """One seed of one set to train: its config, where its record goes, the set's cost and checked dataset."""

    set_index: int
    seed: int
    config: Config
    record: Path | str
    cost: dict[str, Any]
    prepared: PreparedDataset


def _jobs(seed_set: SeedSet, index: int) -> list[_Job]:
    """The seeds of `seed_set` that have not finished, with the set's cost: measured once, before any of them loads
    the machine (they train the same model), and only when one is left to train."""
    config = seed_set.config
    records = {seed: seed_set.record(seed) for seed in seed_set.seeds}
    todo = [seed for seed in seed_set.seeds if not _finished(records[seed])]
    if not todo:
        return []
    prepared = seed_set.prepared or check_inputs(absolute_paths(config))
    first = absolute_paths(override(config, {"seed": todo[0]}, "seeds"))
    cost = seed_set.cost if seed_set.cost is not None else run_cost(first, first.spec(prepared.num_classes),
                                                                        prepared.directory)
    return [_Job(index, seed, override(config, {"seed": seed}, "seeds"), records[seed], cost, prepared)
            for seed in todo]


def open_seed_set(client: MlflowClient, experiment_id: str, config: Config, name: str, seeds: list[int]) -> str:
    """The MLflow parent run of one --all-seeds call (`name`), which nests its seeds' runs: the one started before,
    when resuming it, else a new one holding the params the seeds share."""
    found = _seed_set(client, experiment_id, name)
    if found:
        set_tags(client, found, {"nvan.status": "running"})
        return found
    params = {k: v for k, v in flatten(run_config(config.model_dump(mode="json"))).items() if k != "seed"}
    return start_run(client, experiment_id, name, params | {"seeds": str(seeds)},
                     run_tags("seeds", config.model.preset, config, **{SEED_SET_TAG: name}))


def find_seed_set(mlflow: MlflowConfig, name: str) -> str | None:
    """The id of the MLflow parent run of the seed set `name`, None if there is none."""
    return _seed_set(*connect(tracking_uri(mlflow.tracking_uri), mlflow.experiment), name)


def _seed_set(client: MlflowClient, experiment_id: str, name: str) -> str | None:
    found = client.search_runs([experiment_id], filter_string=f"tags.`nvan.kind` = 'seeds' and "
                                                              f"tags.`{SEED_SET_TAG}` = '{name}'", max_results=1)
    return found[0].info.run_id if found else None


def _finished(record: Path | str) -> bool:
    return storage.exists(record) and read_record(record).status == "finished"


def _wait(jobs: list[_Job], start, slots: int, epochs: int, results: dict[_Job, TrainResult]) -> None:
    """Start the jobs `slots` at a time and collect each one's result into `results` as its task ends, showing the
    epochs trained so far (read from the live records)."""
    import ray

    waiting, pending, shown = list(jobs), {}, 0
    with Progress(epochs * len(jobs), f"{len(jobs)} seed run(s)", "epochs") as progress:
        while waiting or pending:
            while waiting and len(pending) < slots:
                job = waiting.pop(0)
                pending[start(job)] = job
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                results[pending.pop(ref)] = ray.get(ref)
            trained = sum(_epochs(job.record) for job in jobs)
            progress.update(trained - shown)
            shown = trained


def _epochs(record: Path | str) -> int:
    try:
        return read_record(record).epochs
    except Exception:  # not written yet, or being replaced: counted at the next look
        return 0


def close_stopped(mlflow: MlflowConfig, stop: SeedsInterrupted) -> None:
    """Record the seeds `stop` names as preempted (or interrupted): their MLflow runs (KILLED) and run records, but
    a seed that finished. Call it once the Ray session is shut down: no seed's controller can then still record an
    epoch over it."""
    status = "preempted" if stop.preempted else "interrupted"
    client, experiment_id = connect(tracking_uri(mlflow.tracking_uri), mlflow.experiment)
    for parent in stop.seed_set_run_ids:
        close_run(client, parent, status)
    for ray_run, record in stop.stopped.items():
        run_id = find_run(client, experiment_id, "nvan.ray_run", ray_run)
        if run_id and client.get_run(run_id).data.tags.get("nvan.status") != "finished":
            close_run(client, run_id, status)
        if not storage.exists(record):
            continue  # the seed stopped before its first epoch was recorded
        try:
            found = read_record(record)
        except UserError as e:
            log.warning("seed run %s: its record is left as it is: %s", ray_run, e)
            continue
        if found.status != "finished":
            write_record(record, found.written() | {"status": status})  # the rest as written, byte for byte


def default_name(preset: str) -> str:
    """A new run name for a set of seeds: preset and time."""
    return f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
