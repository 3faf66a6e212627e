"""The training job's driver: `fit` as a list of phases around a Ray Train TorchTrainer (DDP).

plan the run (check inputs) -> measure its cost -> open its MLflow run -> train -> finish the record.
Per-epoch metrics are logged by Ray Train callbacks in the controller (`harness.train.callbacks`),
after every worker has reported and the checkpoint is persisted, so a restarted worker never logs
an epoch twice. The workers run `harness.train.worker.run_worker`.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import platform
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from harness import storage
from harness.errors import USER_ERRORS, UserError
from harness.config import Config
from harness.params import flatten
from harness.evaluate.queries import read_queries
from harness.echo import short
from harness import preemption
from harness.preemption import Preempted
from harness.redact import redact
from harness.checkpoint import EPOCH_FILE, QUERIES_FILE
from harness.results.records import checkpoint_epochs, history_of, run_config
from harness.results.tracking import (close_run, connect, find_run, git_commit, log_metrics, run_tags, set_tags,
                                      start_run, tracking_uri)
from harness.train.callbacks import LiveRecord, MlflowEpochLogger, controller_callback, progress_bars
from harness.checkpoint import read_state
from harness.prepared import PreparedDataset
from harness.train.plan import RunPlan, WorkerArgs, check_params, plan_run
from harness.train.outcome import FINAL_KEYS, TrainResult, record_base, train_record, write_run
from harness.measure.run_cost import cost_metrics, run_cost
from harness.train.run_dir import (RunLock, latest_checkpoint, log_missing_epochs,
                                repair_snapshot, saved_epochs)
from harness.cluster import numerics_env, worker_resources
from harness.versions import software_versions

log = logging.getLogger("harness.train")


class TrainingInterrupted(Exception):
    """Ctrl-C (or SIGTERM, `preempted`) during training: the MLflow run is closed as interrupted (preempted); the
    Ray run can be resumed."""

    def __init__(self, ray_run: str, preempted: bool = False) -> None:
        super().__init__(ray_run)
        self.ray_run, self.preempted = ray_run, preempted


@dataclass(frozen=True)
class Tracking:
    """The run's MLflow run: the client, the store's URI, the run id, the epochs it holds, and whether it is a
    resumed run's."""

    client: Any
    uri: str
    run_id: str
    logged: frozenset[int]
    resumed: bool


def fit(config: Config, name: str | None = None, resume: str | None = None, parent_run_id: str | None = None,
        tags: dict[str, str] | None = None, progress: bool = True, fail_at_step: int | None = None,
        tune_callbacks: list | None = None, record_to: Path | str | None = None, label: str | None = None,
        kind: str = "train", cost: dict[str, Any] | None = None,
        prepared: PreparedDataset | None = None) -> TrainResult:
    """Train `config` on the connected Ray cluster, tracked in MLflow; return the best result.

    `resume` continues the Ray run of that name (and its MLflow run). `record_to` keeps a run
    record there, rewritten every epoch (status running) and at the end (finished).
    `cost` is the run's `run_cost`, when the caller measured it already (a sweep minimising latency).
    `prepared` is the checked dataset when the caller checked the inputs already (check_inputs of absolute paths).
    `fail_at_step` injects one worker failure at that global step (tests of fault tolerance only).
    """
    plan = plan_run(config, name, resume, record_to, label, kind, prepared)
    with RunLock(plan.run_dir, plan.ray_run):  # one driver per run, from here to its last record
        check_params(plan)
        cost = cost if cost is not None else run_cost(plan.config, plan.spec, plan.directory)
        tracking = open_tracking(plan, cost, parent_run_id, tags)
        result = trained_already(plan, tracking, cost)
        if result is None:
            result = train(plan, tracking, cost, progress, fail_at_step, tune_callbacks)
        return finish(plan, tracking, result)


def open_tracking(plan: RunPlan, cost: dict[str, Any], parent_run_id: str | None,
                  tags: dict[str, str] | None) -> Tracking:
    """The run's MLflow run: the resumed one, with any checkpointed epoch it missed logged now, or a new one
    holding the flattened params, the tags a report filters on, and the cost."""
    config = plan.config
    uri = tracking_uri(config.mlflow.tracking_uri)
    client, experiment_id = connect(uri, config.mlflow.experiment)
    run_id = find_run(client, experiment_id, "nvan.ray_run", plan.ray_run)
    if run_id is not None and not plan.resume:
        raise UserError(f"run name {plan.ray_run} is taken: MLflow run {run_id} in {redact(uri)} has it; continue it "
                        f"with --resume {plan.ray_run}, or choose another --name")
    if run_id is not None:
        return Tracking(client, uri, run_id, frozenset(log_missing_epochs(client, run_id, plan.saved)), True)
    # Only what decides the run (the record's params): not sweep.*, report.* or other presets' blocks.
    params = flatten(run_config(config.model_dump(mode="json"))) | {
        "git_commit": git_commit(), "dataset.manifest_hash": plan.manifest.get("content_hash", "unknown"),
        "input": config.data.input.label(),
        **{f"spec.{k}": str(list(v)) if isinstance(v, tuple) else v for k, v in plan.spec.__dict__.items()},
    }
    tags = run_tags("train", config.model.preset, config, **{
        "nvan.ray_run": plan.ray_run, "dataset.synthetic": str(plan.manifest.get("synthetic", False)).lower(),
        "cost.threads": str(config.ray.cpus_per_worker), "nvan.seed": str(config.seed),
        **{f"software.{k}": v for k, v in software_versions().items()}}) | (tags or {})
    command = "python -m harness.sweep" if tags["nvan.kind"] == "trial" else "python -m harness.train"
    run_id = start_run(client, experiment_id, plan.ray_run, params, tags, parent_run_id, command)
    log.info("MLflow run %s (experiment %s, %s)", run_id, config.mlflow.experiment, redact(uri))
    log_metrics(client, run_id, cost_metrics(cost))
    if cost["latency"]:
        set_tags(client, run_id, {"cost.device": cost["latency"]["device"], "cost.node": cost["latency"]["node"]})
    return Tracking(client, uri, run_id, frozenset(), False)


def trained_already(plan: RunPlan, tracking: Tracking, cost: dict[str, Any]) -> TrainResult | None:
    """The result of a resumed run whose every epoch is checkpointed (it stopped before its bookkeeping),
    read from its last checkpoint; None when there is training left. UserError if it had finished."""
    epochs = plan.config.train.epochs
    if not (tracking.resumed and plan.saved and max(plan.saved) + 1 >= epochs):
        return None
    if tracking.client.get_run(tracking.run_id).data.tags.get("nvan.status") == "finished":
        raise UserError(f"--resume {plan.ray_run}: the run already trained all {epochs} epochs and finished; "
                        f"nothing to resume. Start a new run, or raise train.epochs to train it further")
    last = plan.saved[max(plan.saved)]
    folder = storage.join(plan.run_dir, last["folder"])
    with tempfile.TemporaryDirectory() as local:
        state = read_state(storage.download(folder, Path(local)), shown=redact(folder))
    return result_at(plan, tracking.run_id, cost, folder, state["best"], epochs=state["epoch"] + 1,
                     worker=last.get("worker") or {}, history=history_of(checkpoint_epochs(last)),
                     clips_per_s=last.get("clips_per_s", math.nan))


def build_trainer(plan: RunPlan, tracking: Tracking, cost: dict[str, Any], queue, fail_at_step: int | None,
                  tune_callbacks: list | None):
    """The TorchTrainer of the run: its workers, resources, failure and checkpoint policy, and callbacks."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from harness.train.rendezvous import BoundTorchConfig, loopback_env

    from harness.train.worker import run_worker

    config = plan.config
    # A local storage folder must be the same folder on every node: workers look for this file.
    probe = None if storage.is_uri(config.ray.storage_path) else storage.join(plan.run_dir, ".driver-probe")
    if probe:
        storage.write_text(probe, f"written by the driver on {platform.node()}\n")
    if plan.resume:
        repair_snapshot(plan.run_dir)
    args = WorkerArgs(config, plan.directory, plan.manifest.get("content_hash"), plan.manifest.get("store_hash"), tracking.run_id,
                      probe, storage.join(plan.run_dir, ".injected-failure"),
                      # Ray's own list of checkpoints can lag behind the disk (a stop right after a checkpoint
                      # was written): the worker resumes from whichever of the two is newer.
                      latest_checkpoint(plan.run_dir) if plan.resume else None, queue, fail_at_step)
    # The record first, then MLflow, then Tune: each never ahead of the one before.
    callbacks = [controller_callback(MlflowEpochLogger, tracking.uri, tracking.run_id, set(tracking.logged)),
                 *(tune_callbacks or [])]
    if plan.record_to:
        base = record_base(plan.given, plan.spec, plan.manifest, cost, plan.label, plan.kind)
        run = {"run": {"mlflow_run_id": tracking.run_id, "ray_run": plan.ray_run, "software": software_versions()}}
        # A resumed run's record starts from the epochs its checkpoint holds (the worker resumes from the same one).
        resumed = checkpoint_epochs(plan.saved[max(plan.saved)]) if plan.saved else {}
        callbacks.insert(0, controller_callback(LiveRecord, str(plan.record_to), base | run, resumed))
    return TorchTrainer(
        run_worker, train_loop_config={"args": args},
        scaling_config=ScalingConfig(num_workers=config.ray.num_workers, use_gpu=config.ray.use_gpu,
                                     resources_per_worker=worker_resources(config.ray)),
        torch_config=BoundTorchConfig(backend="nccl" if config.ray.use_gpu else "gloo"),
        run_config=RunConfig(
            name=plan.ray_run, storage_path=config.ray.storage_path,
            failure_config=FailureConfig(max_failures=config.ray.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=config.train.keep_checkpoints,
                                               checkpoint_score_attribute="checkpoint_score",
                                               checkpoint_score_order="max"),
            callbacks=callbacks, worker_runtime_env={"env_vars": numerics_env(config.train.cpu_isa) | loopback_env(
                # A local Ray (single-machine mode) runs on 127.0.0.1: its ranks talk over loopback only.
                ray.util.get_node_ip_address().startswith("127."))}))


def train(plan: RunPlan, tracking: Tracking, cost: dict[str, Any], progress: bool, fail_at_step: int | None,
          tune_callbacks: list | None) -> TrainResult:
    """Run the Ray Train job to its last epoch and return its best result; the MLflow run is closed as
    interrupted (TrainingInterrupted) on Ctrl-C and as failed on an error."""
    from ray.util.queue import Queue

    client, run_id = tracking.client, tracking.run_id
    set_tags(client, run_id, {"nvan.status": "running"})
    queue = Queue() if progress else None
    trainer = build_trainer(plan, tracking, cost, queue, fail_at_step, tune_callbacks)
    log.info("training %s on %d worker(s): run %s", plan.config.model.preset, plan.config.ray.num_workers,
             plan.ray_run)
    start, started_at = time.perf_counter(), time.time()
    try:
        outcome = run_watched(trainer.fit, queue)
    except KeyboardInterrupt:  # Ctrl-C, or a SIGTERM (Preempted, or what Ray made of it)
        outcome = {"stopped": True}
    # A SIGTERM to the process group may kill the workers first: their error is then the preemption.
    if "stopped" in outcome or "error" in outcome and preemption.requested():
        preempted = preemption.requested()
        close_run(client, run_id, "preempted" if preempted else "interrupted")
        raise TrainingInterrupted(plan.ray_run, preempted) from None
    if "error" in outcome:
        close_run(client, run_id, "failed")
        causes = worker_causes(outcome["error"])
        if causes and all(isinstance(c, USER_ERRORS) for c in causes):
            raise UserError(f"training run {plan.ray_run} failed: {causes[0]}") from None
        if full := no_space(outcome["error"]):
            raise UserError(f"training run {plan.ray_run} stopped: no space left on the device ({short(full)}); its "
                            f"last complete checkpoint is kept. Free space under ray.storage_path "
                            f"({redact(plan.config.ray.storage_path)}) and the workers' temporary folder, then "
                            f"continue with --resume {plan.ray_run}") from None
        raise outcome["error"]
    result, root = outcome["result"], plan.config.ray.storage_path
    metrics = result.metrics or {}
    # Where the user finds it: a local path, or a URI like ray.storage_path.
    checkpoint = storage.join(root, storage.relative(result.checkpoint.path, root)) if result.checkpoint else None
    best = {"epoch": metrics.get("best_epoch", -1), "scores": metrics.get("best_scores"),
            "cmc": metrics.get("best_cmc")}
    return result_at(plan, run_id, cost, checkpoint, best, epochs=metrics.get("epoch", -1) + 1, worker=metrics,
                     history=checkpoint_history(checkpoint) if checkpoint else [],
                     clips_per_s=metrics.get("clips_per_s", math.nan), seconds=time.perf_counter() - start,
                     startup_s=metrics.get("first_step_at", math.nan) - started_at)


def result_at(plan: RunPlan, run_id: str, cost: dict[str, Any], checkpoint: str | None, best: dict[str, Any], *,
              epochs: int, worker: dict[str, Any], history: list[dict[str, Any]], clips_per_s: float,
              seconds: float = math.nan, startup_s: float = math.nan) -> TrainResult:
    """The TrainResult of a run whose latest checkpoint is `checkpoint` and whose selected evaluation is `best`
    ({epoch, scores, cmc}); `worker` holds what rank 0's worker reported of itself; times in seconds."""
    return TrainResult(
        run_id=run_id, ray_run=plan.ray_run, best_epoch=best["epoch"], best_scores=best["scores"] or {},
        best_cmc=best["cmc"] or {}, epochs=epochs, checkpoint=checkpoint, clips_per_s=clips_per_s, seconds=seconds,
        startup_s=startup_s, cost=cost, spec=plan.spec, manifest=plan.manifest,
        cpu_capability=worker.get("cpu_capability"), queries=checkpoint_queries(checkpoint) if checkpoint else None,
        precision=worker.get("precision"), best_checkpoint=best_checkpoint(plan.run_dir, best["epoch"]),
        history=history, worker_cpu=worker.get("worker_cpu"), gpu=worker.get("gpu"))


def checkpoint_history(folder: str) -> list[dict[str, Any]]:
    """The record's history of every epoch up to a checkpoint (records.history_of), from its epoch.json."""
    return history_of(checkpoint_epochs(json.loads(storage.read_text(storage.join(folder, EPOCH_FILE)))))


def best_checkpoint(run_dir: str, best_epoch: int) -> str | None:
    """The complete checkpoint of the selected epoch (train.keep_checkpoints keeps it by its score); None if it has
    none."""
    saved = saved_epochs(run_dir).get(best_epoch)
    return storage.join(run_dir, saved["folder"]) if saved else None


def checkpoint_queries(folder: str) -> pl.DataFrame | None:
    """The per-query outcomes of the best evaluation up to a checkpoint (None if it predates them)."""
    location = storage.join(folder, QUERIES_FILE)
    return read_queries(location) if storage.exists(location) else None


def run_watched(fit_trainer, queue) -> dict[str, Any]:
    """Run `fit_trainer()` in a thread while the main thread shows progress and stays able to take Ctrl-C;
    return {"result": ...} or {"error": ...}."""
    done, outcome = threading.Event(), {}

    def target() -> None:
        try:
            outcome["result"] = fit_trainer()
        except BaseException as e:  # re-raised on the driver's main thread by the caller
            outcome["error"] = e
        finally:
            done.set()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    if queue is not None:
        progress_bars(queue, done, stop=preemption.requested)
    # Wake up now and then: Ctrl-C may reach one of Ray's threads, and Python handles it
    # only when the main thread runs; a plain join() would sleep through it until the run ends.
    while thread.is_alive():
        if preemption.requested():  # its exception was lost in a library (see harness.preemption.Preempted)
            raise Preempted()
        thread.join(0.5)
    return outcome


def no_space(error: BaseException) -> str | None:
    """The message of an ENOSPC (disk full) anywhere in `error`'s causes and the workers' errors, None if there is none."""
    seen, todo = set(), [error]
    while todo:
        found = todo.pop()
        if found is None or id(found) in seen:
            continue
        seen.add(id(found))
        if isinstance(found, OSError) and found.errno == errno.ENOSPC or "No space left on device" in str(found):
            return str(found).strip().splitlines()[-1] if str(found).strip() else "ENOSPC"
        todo += [found.__cause__, found.__context__, *worker_causes(found), getattr(found, "cause", None)]
    return None


def worker_causes(error: BaseException) -> list[BaseException]:
    """The exceptions the training workers raised, unwrapped from Ray's error types."""
    failures = getattr(error, "worker_failures", None) or {}
    return [getattr(failure, "cause", None) or failure for failure in failures.values()]


def finish(plan: RunPlan, tracking: Tracking, result: TrainResult) -> TrainResult:
    """A trained run's bookkeeping: best scores and artifacts in MLflow, its final record, status finished."""
    client, config = tracking.client, plan.config
    primary = result.best_scores.get(config.eval.primary, {})
    extra = {} if math.isnan(result.startup_s) else {"startup_s": result.startup_s}
    log_metrics(client, result.run_id, {f"best.{k}": primary[k] for k in FINAL_KEYS if k in primary}
                | {"best.epoch": result.best_epoch} | extra, step=max(result.epochs - 1, 0))
    log_artifacts(client, config, result)
    if result.precision:
        set_tags(client, result.run_id, {f"precision.{k}": v for k, v in result.precision.items()})
    if plan.record_to:
        write_run(plan.record_to, train_record(Config.model_validate(plan.given), result, plan.label, plan.kind),
                  result.queries)
    close_run(client, result.run_id, "finished")
    return result


def log_artifacts(client, config: Config, result: TrainResult) -> None:
    """The run's resolved config, best scores and CMC plot in MLflow, and its checkpoint if train.log_checkpoint."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cmc = result.best_cmc.get(config.eval.primary)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        (folder / "config.yaml").write_text(redact(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)))
        (folder / "metrics.json").write_text(json.dumps(
            {"best_epoch": result.best_epoch, "best": result.best_scores, "clips_per_s": result.clips_per_s,
             "seconds": result.seconds}, indent=2))
        if cmc:
            fig = Figure(figsize=(5, 3.5), layout="tight")
            FigureCanvasAgg(fig)
            ax = fig.subplots()
            ax.plot(range(1, len(cmc) + 1), [100 * c for c in cmc], marker=".")
            ax.set(xlabel="rank", ylabel="matching rate (%)", ylim=(0, 100),
                   title=f"CMC, {config.eval.primary}, epoch {result.best_epoch} ({config.eval.select})")
            ax.grid(alpha=0.3)
            fig.savefig(folder / "cmc.png", dpi=120)
        if result.queries is not None:
            result.queries.write_parquet(folder / QUERIES_FILE)
        for file in folder.iterdir():
            client.log_artifact(result.run_id, str(file))
    if (logged := result.best_checkpoint or result.checkpoint) and config.train.log_checkpoint:
        with tempfile.TemporaryDirectory() as local:
            client.log_artifacts(result.run_id, str(storage.download(logged, Path(local))), "checkpoint")
