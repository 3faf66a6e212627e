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

from datasets.progress import Progress
from harness import storage
from harness.config import Config
from harness.params import override
from harness import preemption
from harness.results.records import read_record
from harness.results.tracking import connect, find_run, set_tags, tracking_uri
from harness.train.driver import TrainingInterrupted, absolute_paths, check_inputs, fit
from harness.train.result import TrainResult
from harness.train.run_cost import run_cost
from harness.train.session import worker_resources

log = logging.getLogger("harness.train")


def seed_record(out_dir: Path | str, seed: int) -> Path:
    """Where the run record of `seed` goes in a seeds folder: <out_dir>/seed<seed>.json."""
    return Path(out_dir) / f"seed{seed}.json"


def seed_run_name(name: str, seed: int) -> str:
    """The Ray run (and MLflow run) name of one seed of the run `name`."""
    return f"{name}-seed{seed}"


def _fit_seed(config: dict[str, Any], cwd: str, name: str, resume: bool, record_to: str,
              cost: dict[str, Any]) -> TrainResult:
    """The driver of one seed's training job, as a Ray task on the driver's node: `fit` in the driver's working
    directory (params paths are relative to it, and the record keeps them as given), writing the record as it trains."""
    before = os.getcwd()
    os.chdir(cwd)
    try:
        return fit(Config.model_validate(config), name=None if resume else name, resume=name if resume else None,
                   progress=False, record_to=record_to, cost=cost)
    finally:
        os.chdir(before)


def fit_seeds(config: Config, seeds: list[int], out_dir: Path, name: str, resume: bool = False) -> list[TrainResult]:
    """Train `config` once per seed, side by side on the connected Ray cluster; records go to out_dir/seed<k>.json.

    `resume` continues the seeds of the run `name` that have not finished (their records say so) and
    starts those that never began. Ctrl-C closes every seed's MLflow run as interrupted and raises
    TrainingInterrupted(name).
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    check_inputs(absolute_paths(config))
    records = {seed: seed_record(out_dir, seed) for seed in seeds}
    done = {seed: _finished(path) for seed, path in records.items()}
    todo = [seed for seed in seeds if not done[seed]]
    configs = {seed: override(config, {"seed": seed}, "seeds") for seed in todo}
    # The seeds train the same model: its cost is measured once, before any of them loads the machine.
    first = absolute_paths(configs[todo[0]]) if todo else None
    cost = run_cost(first, first.spec(_classes(first)), first.data.prepared_root / first.data.dataset) if first else {}
    task = ray.remote(num_cpus=0, max_retries=0)(_fit_seed).options(
        # On the driver's node: each task writes its seed's record into the driver's out_dir.
        scheduling_strategy=NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False))
    have = ray.cluster_resources()
    # As many runs at once as the cluster holds their workers (CPUs, and GPUs when they train on them).
    slots = max(1, min(int(have.get(k, 0) // (config.ray.num_workers * v)) for k, v in worker_resources(config).items()))
    log.info("training %s with seeds %s (%d to train), %d at once", config.model.preset, seeds, len(todo),
             min(slots, len(todo)))

    def start(seed: int):
        run = seed_run_name(name, seed)
        again = resume and storage.is_dir(storage.join(storage.absolute(config.ray.storage_path), run))
        return task.remote(configs[seed].model_dump(mode="json"), os.getcwd(), run, again,
                           str(records[seed].resolve()), cost)

    try:
        # No more seeds started than the cluster can train at once: a waiting one would only hold processes.
        results = _wait(todo, start, slots, records, config.train.epochs)
    except KeyboardInterrupt:  # Ctrl-C, or a SIGTERM (Preempted, or what Ray made of it)
        preempted = preemption.requested()
        close_interrupted(config, [seed_run_name(name, seed) for seed in todo], "preempted" if preempted else "interrupted")
        raise TrainingInterrupted(name, preempted) from None
    return [results[seed] for seed in todo]


def _classes(config: Config) -> int:
    from datasets.loaders import TrainClips

    return TrainClips(config.data.prepared_root / config.data.dataset, config.data.frames).num_classes


def _finished(record: Path) -> bool:
    return record.exists() and read_record(record).get("status") == "finished"


def _wait(todo: list[int], start, slots: int, records: dict[int, Path], epochs: int) -> dict[int, TrainResult]:
    """Start the seeds `slots` at a time and collect each one's result as its task ends, showing the epochs
    trained so far (read from the live records)."""
    import ray

    waiting, pending, results, shown = list(todo), {}, {}, 0
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
    return results


def _epochs(record: Path) -> int:
    try:
        return int(read_record(record)["epochs"])
    except Exception:  # not written yet, or being replaced: counted at the next look
        return 0


def close_interrupted(config: Config, ray_runs: list[str], status: str = "interrupted") -> None:
    """Close the MLflow runs of `ray_runs` that are still running as `status` (interrupted or preempted; KILLED)."""
    client, experiment_id = connect(tracking_uri(config.mlflow.tracking_uri), config.mlflow.experiment)
    for ray_run in ray_runs:
        run_id = find_run(client, experiment_id, "nvan.ray_run", ray_run)
        if run_id and client.get_run(run_id).data.tags.get("nvan.status") == "running":
            set_tags(client, run_id, {"nvan.status": status})
            client.set_terminated(run_id, "KILLED")


def default_name(config: Config) -> str:
    """A new run name for a set of seeds: preset and time."""
    return f"{config.model.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
