"""One configuration trained once per seed, side by side in one Ray session: a run record per seed.

Each seed's training job is driven by a zero-CPU Ray task on the driver's node (as a sweep trial's
driver is), so the seeds share one Ray start-up and run as many at once as the cluster has room
for: on a 2-core machine with one thread per worker, two seeds train while the others wait. The
cost is measured once, before any seed trains, and shared: the seeds train the same model.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from datasets.progress import Progress
from harness import storage
from harness.config import Config, MlflowConfig
from harness.params import flatten, override
from harness import preemption
from harness.errors import UserError
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
               callbacks: list | None = None) -> TrainResult:
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
               cost=cost)


def _fit_seed(config: dict[str, Any], cwd: str, name: str, resume: bool, record_to: str,
              cost: dict[str, Any], seed_set: dict[str, str]) -> TrainResult:
    """The driver of one seed's training job, as a Ray task on the driver's node: `train_seed` in the driver's
    working directory (params paths are relative to it, and the record keeps them as given)."""
    before = os.getcwd()
    os.chdir(cwd)
    try:
        return train_seed(Config.model_validate(config), name, record_to, resume, parent_run_id=seed_set["run_id"],
                          tags={SEED_SET_TAG: seed_set["name"]}, cost=cost)
    finally:
        os.chdir(before)


class SeedsInterrupted(TrainingInterrupted):
    """Ctrl-C or SIGTERM during --all-seeds: `ray_run` names the set (what --resume takes), `stopped` maps the Ray run
    of each seed that had not finished to its record, `seed_set_run_id` is the set's MLflow parent run. Close them with `close_stopped` once Ray is shut down."""

    def __init__(self, name: str, preempted: bool, stopped: dict[str, Path], seed_set_run_id: str) -> None:
        super().__init__(name, preempted)
        self.stopped, self.seed_set_run_id = stopped, seed_set_run_id


def fit_seeds(config: Config, seeds: list[int], out_dir: Path, name: str, resume: bool = False) -> list[TrainResult]:
    """Train `config` once per seed, side by side on the connected Ray cluster; records go to out_dir/seed<k>.json.

    `resume` continues the seeds of the run `name` that have not finished (their records say so) and
    starts those that never began. Ctrl-C or SIGTERM raises SeedsInterrupted naming the seeds it stopped.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    prepared = check_inputs(absolute_paths(config))
    records = {seed: seed_record(out_dir, seed) for seed in seeds}
    done = {seed: _finished(path) for seed, path in records.items()}
    todo = [seed for seed in seeds if not done[seed]]
    configs = {seed: override(config, {"seed": seed}, "seeds") for seed in todo}
    # The seeds train the same model: its cost is measured once, before any of them loads the machine.
    first = absolute_paths(configs[todo[0]]) if todo else None
    cost = run_cost(first, first.spec(prepared.num_classes), prepared.directory) if first else {}
    task = ray.remote(num_cpus=0, max_retries=0)(_fit_seed).options(
        # On the driver's node: each task writes its seed's record into the driver's out_dir.
        scheduling_strategy=NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False))
    have = ray.cluster_resources()
    # As many runs at once as the cluster holds their workers (CPUs, and GPUs when they train on them).
    slots = max(1, min(int(have.get(k, 0) // (config.ray.num_workers * v)) for k, v in worker_resources(config.ray).items()))
    log.info("training %s with seeds %s (%d to train), %d at once", config.model.preset, seeds, len(todo),
             min(slots, len(todo)))
    client, experiment_id = connect(tracking_uri(config.mlflow.tracking_uri), config.mlflow.experiment)
    seed_set = {"name": name, "run_id": open_seed_set(client, experiment_id, config, name, seeds)}

    def start(seed: int):
        return task.remote(configs[seed].model_dump(mode="json"), os.getcwd(), seed_run_name(name, seed), resume,
                           str(records[seed].resolve()), cost, seed_set)

    results: dict[int, TrainResult] = {}
    try:
        # No more seeds started than the cluster can train at once: a waiting one would only hold processes.
        _wait(todo, start, slots, records, config.train.epochs, results)
    except KeyboardInterrupt:  # Ctrl-C, or a SIGTERM (Preempted, or what Ray made of it)
        stopped = {seed_run_name(name, seed): records[seed] for seed in todo if seed not in results}
        raise SeedsInterrupted(name, preemption.requested(), stopped, seed_set["run_id"]) from None
    except Exception:
        close_run(client, seed_set["run_id"], "failed")
        raise
    close_run(client, seed_set["run_id"], "finished")
    return [results[seed] for seed in todo]


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


def _finished(record: Path) -> bool:
    return record.exists() and read_record(record).get("status") == "finished"


def _wait(todo: list[int], start, slots: int, records: dict[int, Path], epochs: int,
          results: dict[int, TrainResult]) -> None:
    """Start the seeds `slots` at a time and collect each one's result into `results` as its task ends, showing the
    epochs trained so far (read from the live records)."""
    import ray

    waiting, pending, shown = list(todo), {}, 0
    with Progress(epochs * len(todo), f"{len(todo)} seed(s)", "epochs") as progress:
        while waiting or pending:
            while waiting and len(pending) < slots:
                seed = waiting.pop(0)
                pending[start(seed)] = seed
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                results[pending.pop(ref)] = ray.get(ref)
            trained = sum(_epochs(records[seed]) for seed in todo)
            progress.update(trained - shown)
            shown = trained


def _epochs(record: Path) -> int:
    try:
        return int(read_record(record)["epochs"])
    except Exception:  # not written yet, or being replaced: counted at the next look
        return 0


def close_stopped(mlflow: MlflowConfig, stop: SeedsInterrupted) -> None:
    """Record the seeds `stop` names as preempted (or interrupted): their MLflow runs (KILLED) and run records, but
    a seed that finished. Call it once the Ray session is shut down: no seed's controller can then still record an
    epoch over it."""
    status = "preempted" if stop.preempted else "interrupted"
    client, experiment_id = connect(tracking_uri(mlflow.tracking_uri), mlflow.experiment)
    close_run(client, stop.seed_set_run_id, status)
    for ray_run, record in stop.stopped.items():
        run_id = find_run(client, experiment_id, "nvan.ray_run", ray_run)
        if run_id and client.get_run(run_id).data.tags.get("nvan.status") != "finished":
            close_run(client, run_id, status)
        if not record.exists():
            continue  # the seed stopped before its first epoch was recorded
        try:
            found = read_record(record)
        except UserError as e:
            log.warning("seed run %s: its record is left as it is: %s", ray_run, e)
            continue
        if found["status"] != "finished":
            write_record(record, found | {"status": status})


def default_name(preset: str) -> str:
    """A new run name for a set of seeds: preset and time."""
    return f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
