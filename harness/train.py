"""The training job: a Ray Train TorchTrainer (DDP) with MLflow tracking (python -m harness.train).

The driver checks inputs and resources, creates the MLflow run, starts the workers
(`harness.train_loop.run_worker`), shows progress, and logs cost, best scores and artifacts.
Per-epoch metrics are logged by a Ray Train callback in the controller, after every worker
has reported and the checkpoint is persisted, so a restarted worker never logs an epoch twice.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import re
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from datasets.progress import Progress
from harness import storage
from harness.checkpoint import read_state
from harness.cli import USER_ERRORS, UserError, config_parser, load_from_args, run
from harness.config import PAPER_INPUT, Config, InputSize, flatten
from harness.io import check_writable
from harness.prepared import prepared_dataset
from harness.records import EPOCH_FILE, run_record, write_record
from harness.tracking import connect, find_run, git_commit, log_metrics, set_tags, start_run, tracking_uri

log = logging.getLogger("harness.train")

RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "RAY_TRAIN_METRICS_ENABLED": "0"}
FINAL_KEYS = ("rank1", "rank5", "rank10", "rank20", "map", "minp")
LOCAL_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's single-machine mode, servers on loopback


@dataclass(frozen=True)
class TrainResult:
    """What a finished training job leaves: its MLflow run, best epoch, scores and CMC, checkpoint, cost."""

    run_id: str
    ray_run: str
    best_epoch: int
    best_scores: dict[str, dict[str, float]]
    best_cmc: dict[str, list[float]]
    epochs: int
    checkpoint: str | None
    clips_per_s: float
    seconds: float
    startup_s: float
    cost: dict[str, Any]
    spec: Any  # ModelSpec
    manifest: dict[str, Any]
    cpu_capability: str | None = None  # the CPU kernels torch ran in the workers (e.g. AVX2)


@contextmanager
def ray_session(address: str | None, num_cpus: int | None = None, resources: dict[str, float] | None = None,
                log_to_driver: bool = False):
    """Connect to the Ray cluster at `address`, or start a local one on loopback; shut it down on exit.

    A local Ray serves this machine alone, so its GCS, raylet and workers listen on 127.0.0.1
    only. Ray does that in its single-machine mode (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read
    by ray_constants at import, so the constant is set too when Ray is already imported).
    Joining a cluster keeps the cluster's own network setup.
    """
    import ray
    import ray._private.ray_constants as ray_constants

    if ray.is_initialized():
        yield
        return
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    local = address is None
    saved = os.environ.get(LOCAL_ONLY), ray_constants.ENABLE_RAY_CLUSTER
    if local:
        os.environ[LOCAL_ONLY], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        # "local" starts a new instance even when another Ray runs on this machine (ray.init()
        # without an address would join that one instead).
        ray.init(address=address or "local", num_cpus=num_cpus if local else None,
                 resources=resources if local else None,
                 include_dashboard=False, log_to_driver=log_to_driver,
                 runtime_env={"env_vars": {k: os.environ[k] for k in RAY_ENV}})
        yield
    finally:
        ray.shutdown()
        if local:
            ray_constants.ENABLE_RAY_CLUSTER = saved[1]
            if saved[0] is None:
                os.environ.pop(LOCAL_ONLY, None)
            else:
                os.environ[LOCAL_ONLY] = saved[0]


def numerics_env(cpu_isa: str) -> dict[str, str]:
    """Environment for training workers that pins torch's x86 CPU kernels (train.cpu_isa).

    Float sums come out differently with AVX-512 and AVX2 kernels, and 30 epochs from scratch turn
    that rounding into several points of rank-1: pinning AVX2 keeps CPU results the same across x86
    machines that have it. No effect elsewhere (ARM) or on GPU math.
    """
    if cpu_isa == "native" or platform.machine().lower() not in ("x86_64", "amd64"):
        return {}
    return {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def absolute_paths(config: Config) -> Config:
    """`config` with its data, storage and init paths made absolute (relative to this process's cwd; URIs kept)."""
    init = config.train.imagenet_init
    return config.model_copy(update={
        "data": config.data.model_copy(update={"prepared_root": config.data.prepared_root.resolve()}),
        "ray": config.ray.model_copy(update={"storage_path": storage.absolute(config.ray.storage_path)}),
        "train": config.train.model_copy(update={"imagenet_init": init.resolve() if init else None}),
    })


def check_resources(config: Config) -> None:
    """Fail fast, with the counts, when the cluster cannot host the workers (never wait on it)."""
    import ray

    have = ray.cluster_resources()
    workers = config.ray.num_workers
    need = {"CPU": workers * config.ray.cpus_per_worker}
    if config.ray.use_gpu:
        need["GPU"] = workers * config.ray.gpus_per_worker
    short = {k: (v, have.get(k, 0)) for k, v in need.items() if v > have.get(k, 0)}
    if short:
        detail = ", ".join(f"{v:g} {k} needed, {h:g} in the cluster" for k, (v, h) in short.items())
        raise UserError(
            f"ray.num_workers = {workers} with ray.cpus_per_worker = {config.ray.cpus_per_worker}"
            f"{f' and ray.gpus_per_worker = {config.ray.gpus_per_worker}' if config.ray.use_gpu else ''} "
            f"does not fit: {detail}; lower the worker count or resources per worker, or add nodes"
        )


def check_inputs(config: Config) -> Path:
    """The prepared dataset folder, after checking it fits the config, the init weights exist and the
    storage path is writable."""
    directory, _ = prepared_dataset(config)
    init = config.train.imagenet_init
    if init is not None and not init.is_file():
        raise UserError(f"train.imagenet_init {init} does not exist; give the path of a torchvision resnet50 "
                        f"state dict, or null to train from scratch")
    storage.check_writable(config.ray.storage_path)
    return directory


class MlflowEpochLogger:
    """Logs each epoch's numeric metrics (rank 0's report) to one MLflow run, from the Ray controller.

    Checkpoints are sparse (train.checkpoint_every), so workers restarted after a failure train
    and report again the epochs since the last one: those are logged once, the first time.
    """

    def __init__(self, uri: str, run_id: str, logged_through: int = -1) -> None:
        self.uri, self.run_id, self._client, self.logged_through = uri, run_id, None, logged_through

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        from mlflow import MlflowClient

        if metrics[0]["epoch"] <= self.logged_through:
            return
        self.logged_through = metrics[0]["epoch"]
        self._client = self._client or MlflowClient(self.uri)
        skip = ("epoch", "checkpoint_score", "best_value", "first_step_at")
        numbers = {k: v for k, v in metrics[0].items() if k not in skip}
        log_metrics(self._client, self.run_id, numbers, step=int(metrics[0]["epoch"]))


class LiveRecord:
    """Rewrites a run's record after every epoch, before MLflow or Tune hear of the epoch (runs in the controller).

    Whatever stops the run, the record holds every epoch the others saw, so a sweep's table is
    built from records alone.
    """

    def __init__(self, path: str, record: dict[str, Any]) -> None:
        self.path, self.record = path, record

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        first = metrics[0]
        scores, cmc = first.get("best_scores") or {}, first.get("best_cmc") or {}
        write_record(self.path, self.record | {
            "status": "running", "scores": {p: s | {"cmc": cmc.get(p)} for p, s in scores.items()},
            "best_epoch": first.get("best_epoch", -1), "epochs": first["epoch"] + 1})


def _callback(cls, *args):
    from ray.train import UserCallback

    # Mixed in at call time so that importing this module does not import Ray.
    return type(cls.__name__ + "Callback", (cls, UserCallback), {})(*args)


def _progress_bars(queue, done: threading.Event) -> None:
    """Rank 0's steps as a bar per epoch on a terminal, else as log lines (datasets.progress.Progress)."""
    progress, current = None, None
    while not (done.is_set() and queue.empty()):
        try:
            epoch, step, steps, loss, clips = queue.get(timeout=0.5)
        except Exception:  # ray.util.queue.Empty; the queue's exception types vary by version
            continue
        if epoch != current:
            if progress:
                progress.close()
            progress, current = Progress(steps, f"epoch {epoch}", "steps"), epoch
        progress.update(step - progress.done)
        if progress.bar is not None:
            progress.bar.set_postfix(loss=f"{loss:.3f}", clips_s=f"{clips:.1f}", refresh=True)
    if progress:
        progress.close()


def run_cost(config: Config, spec, directory: Path) -> dict[str, Any]:
    """Params; GMACs per clip (at the run's input and the paper's), per frame and per test tracklet; and,
    if cost.measure, latency and memory timed with one training worker's resources on the cluster."""
    from datasets.loaders import EvalClips
    from harness.cost import cost_of, macs_on_meta, measure_where_trained, tracklet_costs

    report = cost_of(config.model.preset, spec, config.data.input, measure_time=False)
    clips = EvalClips(directory, config.data.frames, config.eval.sampler).clips_per_tracklet()
    cost = {
        "params": report.params, "params_m": report.params / 1e6, "gmacs": report.gmacs, "input": report.input_label,
        "gmacs_paper": macs_on_meta(spec, PAPER_INPUT) / 1e9 if _fits(spec, PAPER_INPUT) else None,
        "paper_input": PAPER_INPUT.label(),
        **tracklet_costs(report.gmacs, config.data.frames, clips.tolist(), config.eval.sampler),
        "latency": None, "peak_memory_mb": None,
    }
    if config.cost.measure:
        resources = _worker_resources(config)
        latency, peak, node = measure_where_trained(
            spec, config.data.input, cpus=config.ray.cpus_per_worker, gpus=resources.get("GPU", 0),
            env=numerics_env(config.train.cpu_isa), warmup=config.cost.warmup, repeats=config.cost.repeats)
        cost |= {"latency": latency.as_dict() | node | {"batch": 1, "model": "BN-folded, as evaluation runs it"},
                 "peak_memory_mb": peak}
    return cost


def cost_metrics(cost: dict[str, Any]) -> dict[str, float]:
    """The run's cost as MLflow metrics (NaN where not measured)."""
    latency = cost.get("latency") or {}
    nan = math.nan
    return {
        "cost.params_m": cost["params_m"], "cost.gmacs": cost["gmacs"],
        "cost.gmacs_paper": cost["gmacs_paper"] if cost.get("gmacs_paper") is not None else nan,
        "cost.gmacs_per_frame": cost["gmacs_per_frame"], "cost.gmacs_per_tracklet": cost["gmacs_per_tracklet"],
        "cost.clips_per_tracklet": cost["clips_per_tracklet"],
        "cost.latency_ms": 1e3 * latency["median_s"] if latency else nan,
        "cost.latency_min_ms": 1e3 * latency["min_s"] if latency else nan,
        "cost.latency_max_ms": 1e3 * latency["max_s"] if latency else nan,
        "cost.latency_noisy": float(latency["noisy"]) if latency else nan,
    }


def _fits(spec, size: InputSize) -> bool:
    from models.spec import SpecError

    try:
        spec.validate_input(size.frames, size.height, size.width)
    except SpecError:
        return False
    return True


def _artifacts(client, run_id: str, config: Config, result: TrainResult, cmc: list[float] | None,
               checkpoint_dir: str | None) -> None:
    import tempfile

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        (folder / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        (folder / "metrics.json").write_text(json.dumps(
            {"best_epoch": result.best_epoch, "best": result.best_scores, "clips_per_s": result.clips_per_s,
             "seconds": result.seconds}, indent=2))
        if cmc:
            fig, ax = plt.subplots(figsize=(5, 3.5))
            ranks = range(1, len(cmc) + 1)
            ax.plot(ranks, [100 * c for c in cmc], marker=".")
            ax.set(xlabel="rank", ylabel="matching rate (%)", ylim=(0, 100),
                   title=f"CMC, {config.eval.protocols[0]}, best epoch {result.best_epoch}")
            ax.grid(alpha=0.3)
            fig.tight_layout()
            fig.savefig(folder / "cmc.png", dpi=120)
            plt.close(fig)
        for file in folder.iterdir():
            client.log_artifact(run_id, str(file))
    if checkpoint_dir and config.train.log_checkpoint:
        with tempfile.TemporaryDirectory() as local:
            client.log_artifacts(run_id, str(storage.download(checkpoint_dir, Path(local))), "checkpoint")


RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class TrainingInterrupted(Exception):
    """Ctrl-C during training: the MLflow run is closed as interrupted; the Ray run can be resumed."""

    def __init__(self, ray_run: str) -> None:
        super().__init__(ray_run)
        self.ray_run = ray_run


def check_run_name(name: str, option: str) -> None:
    """UserError unless `name` is a plain folder name (it becomes <ray.storage_path>/<name>)."""
    if not RUN_NAME.fullmatch(name) or name in (".", ".."):
        raise UserError(f"{option} {name!r}: a run name is a folder under ray.storage_path, so it takes letters, "
                        f"digits, '.', '_' and '-', starting with a letter or digit (no '/' or '..')")


def saved_epochs(run_dir: str) -> dict[int, dict[str, Any]]:
    """The epochs whose checkpoints a Ray run (a folder or URI) still holds: their reported metrics and "folder"."""
    found = {}
    for folder in storage.list_dirs(run_dir):
        if not folder.startswith("checkpoint_"):
            continue
        try:
            metrics = json.loads(storage.read_text(storage.join(run_dir, folder, EPOCH_FILE)))
            found[int(metrics["epoch"])] = metrics | {"folder": folder}
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a checkpoint being written when the run stopped
    return found


def log_missing_epochs(client, run_id: str, saved: dict[int, dict[str, float]]) -> int:
    """Log the metrics of checkpointed epochs that MLflow lacks (the run stopped between the two);
    return the last epoch MLflow now holds (-1 if none)."""
    logged = {m.step for m in client.get_metric_history(run_id, "loss")}
    skip = ("epoch", "checkpoint_score", "best_value", "first_step_at", "folder")
    for epoch, metrics in sorted(saved.items()):
        if epoch not in logged:
            log.info("logging epoch %d of run %s, checkpointed but not in MLflow", epoch, run_id)
            log_metrics(client, run_id, {k: v for k, v in metrics.items() if k not in skip}, step=epoch)
    return max(logged | set(saved), default=-1)


def worker_causes(error: BaseException) -> list[BaseException]:
    """The exceptions the training workers raised, unwrapped from Ray's error types."""
    failures = getattr(error, "worker_failures", None) or {}
    causes = []
    for failure in failures.values():
        cause = getattr(failure, "cause", None) or failure
        causes.append(cause)
    return causes


def fit(config: Config, name: str | None = None, resume: str | None = None, parent_run_id: str | None = None,
        tags: dict[str, str] | None = None, progress: bool = True, fail_at_step: int | None = None,
        tune_callbacks: list | None = None, record_to: Path | str | None = None, label: str | None = None,
        kind: str = "train", cost: dict[str, Any] | None = None) -> TrainResult:
    """Train `config` on the connected Ray cluster, tracked in MLflow; return the best result.

    `resume` continues the Ray run of that name (and its MLflow run). `record_to` keeps a run
    record there, rewritten every epoch (status running) and at the end (finished).
    `cost` is the run's `run_cost`, when the caller measured it already (a sweep minimising latency).
    `fail_at_step` injects one worker failure at that global step (tests of fault tolerance only).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

    from datasets.loaders import TrainClips
    from harness.train_loop import run_worker

    given = config.model_dump(mode="json")  # recorded as the user wrote it
    # Workers do not run in the driver's working directory: ship absolute paths.
    config = absolute_paths(config)
    directory = check_inputs(config)
    check_resources(config)
    root = config.ray.storage_path
    if resume:
        check_run_name(resume, "--resume")
        if not storage.is_dir(storage.join(root, resume)):
            raise UserError(f"--resume {resume}: no run {storage.join(root, resume)}; list the runs there or start "
                            f"a new one")
        ray_run = resume
        saved = saved_epochs(storage.join(root, ray_run))
    else:
        ray_run = name or f"{config.model.preset}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        check_run_name(ray_run, "--name")
    run_dir = storage.join(root, ray_run)
    storage.make_dirs(run_dir)

    uri = tracking_uri(config.mlflow.tracking_uri)
    client, experiment_id = connect(uri, config.mlflow.experiment)
    num_classes = TrainClips(directory, config.data.frames).num_classes
    manifest = json.loads((directory / "manifest.json").read_text())
    spec = config.spec(num_classes)
    cost = cost if cost is not None else run_cost(config, spec, directory)
    run_id = find_run(client, experiment_id, "nvan.ray_run", ray_run) if resume else None
    logged_through = -1
    if run_id is not None:
        logged_through = log_missing_epochs(client, run_id, saved)
        if saved and max(saved) + 1 >= config.train.epochs:
            if client.get_run(run_id).data.tags.get("nvan.status") == "finished":
                raise UserError(f"--resume {resume}: the run already trained all {config.train.epochs} epochs and "
                                f"finished; nothing to resume. Start a new run, or raise train.epochs to train it "
                                f"further")
            # Every epoch is trained but the run stopped before its bookkeeping: finish it, train nothing.
            last = storage.join(run_dir, saved[max(saved)]["folder"])
            with tempfile.TemporaryDirectory() as local:
                state = read_state(storage.download(last, Path(local)))
            best = state["best"]
            result = TrainResult(run_id, ray_run, best["epoch"], best["scores"] or {}, best["cmc"] or {},
                                 state["epoch"] + 1, last,
                                 saved[max(saved)].get("clips_per_s", math.nan), math.nan, math.nan, cost, spec,
                                 manifest, saved[max(saved)].get("cpu_capability"))
            return _finish(client, config, given, result, record_to, label, kind)
        set_tags(client, run_id, {"nvan.status": "running"})
    else:
        params = flatten(config) | {
            "git_commit": git_commit(), "dataset.manifest_hash": manifest.get("content_hash", "unknown"),
            "input": config.data.input.label(),
            **{f"spec.{k}": str(list(v)) if isinstance(v, tuple) else v for k, v in spec.__dict__.items()},
        }
        device = "cuda" if config.ray.use_gpu else "cpu"
        run_tags = {"nvan.kind": "train", "nvan.label": config.model.preset, "nvan.ray_run": ray_run,
                    "nvan.status": "running", "dataset": config.data.dataset, "preset": config.model.preset,
                    "protocol": config.eval.protocols[0], "device": device,
                    "dataset.synthetic": str(manifest.get("synthetic", False)).lower(),
                    "cost.threads": str(config.ray.cpus_per_worker)} | (tags or {})
        run_id = start_run(client, experiment_id, ray_run, params, run_tags, parent_run_id)
        log.info("MLflow run %s (experiment %s, %s)", run_id, config.mlflow.experiment, uri)
        log_metrics(client, run_id, cost_metrics(cost))
        if cost["latency"]:
            set_tags(client, run_id, {"cost.device": cost["latency"]["device"], "cost.node": cost["latency"]["node"]})

    queue = Queue() if progress else None
    # A local storage folder must be the same folder on every node: workers look for this file.
    probe = None if storage.is_uri(root) else storage.join(run_dir, ".driver-probe")
    if probe:
        storage.write_text(probe, f"written by the driver on {platform.node()}\n")
    loop_config = {"config": config.model_dump(mode="json"), "progress": queue, "fail_at_step": fail_at_step,
                   "mlflow_run_id": run_id, "manifest_hash": manifest.get("content_hash"), "storage_probe": probe,
                   "fail_marker": storage.join(run_dir, ".injected-failure")}
    trainer = TorchTrainer(
        run_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=config.ray.num_workers, use_gpu=config.ray.use_gpu,
                                     resources_per_worker=_worker_resources(config)),
        torch_config=TorchConfig(backend="nccl" if config.ray.use_gpu else "gloo"),
        run_config=RunConfig(
            name=ray_run, storage_path=root,
            failure_config=FailureConfig(max_failures=config.ray.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=config.train.keep_checkpoints,
                                               checkpoint_score_attribute="checkpoint_score",
                                               checkpoint_score_order="max"),
            # The record first, then MLflow, then Tune: each never ahead of the one before.
            callbacks=[*([_callback(LiveRecord, str(record_to), record_base(given, spec, manifest, cost, label, kind)
                                                             | {"run": {"mlflow_run_id": run_id, "ray_run": ray_run}})]
                         if record_to else []),
                       _callback(MlflowEpochLogger, uri, run_id, logged_through), *(tune_callbacks or [])],
            worker_runtime_env={"env_vars": numerics_env(config.train.cpu_isa)},
        ),
    )
    log.info("training %s on %d worker(s): run %s", config.model.preset, config.ray.num_workers, ray_run)
    start, started_at = time.perf_counter(), time.time()
    done, outcome = threading.Event(), {}

    def target() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as e:  # re-raised on the driver's main thread below
            outcome["error"] = e
        finally:
            done.set()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        if queue is not None:
            _progress_bars(queue, done)
        # Wake up now and then: Ctrl-C may reach one of Ray's threads, and Python handles it
        # only when the main thread runs; a plain join() would sleep through it until the run ends.
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        set_tags(client, run_id, {"nvan.status": "interrupted"})
        client.set_terminated(run_id, "KILLED")
        raise TrainingInterrupted(ray_run) from None
    seconds = time.perf_counter() - start
    if "error" in outcome:
        set_tags(client, run_id, {"nvan.status": "failed"})
        client.set_terminated(run_id, "FAILED")
        error = outcome["error"]
        causes = worker_causes(error)
        if causes and all(isinstance(c, (*USER_ERRORS, UserError)) for c in causes):
            raise UserError(f"training run {ray_run} failed: {causes[0]}") from None
        raise error
    result = outcome["result"]
    metrics = result.metrics or {}
    train_result = TrainResult(run_id, ray_run, metrics.get("best_epoch", -1), metrics.get("best_scores") or {},
                               metrics.get("best_cmc") or {}, metrics.get("epoch", -1) + 1,
                               # Where the user finds it: a local path, or a URI like ray.storage_path.
                               storage.join(root, storage.relative(result.checkpoint.path, root))
                               if result.checkpoint else None,
                               metrics.get("clips_per_s", math.nan), seconds,
                               metrics.get("first_step_at", math.nan) - started_at, cost, spec, manifest,
                               metrics.get("cpu_capability"))
    return _finish(client, config, given, train_result, record_to, label, kind)


def _finish(client, config: Config, given: dict, result: TrainResult, record_to: Path | str | None, label: str | None,
            kind: str) -> TrainResult:
    """A trained run's bookkeeping: best scores and artifacts in MLflow, its final record, status finished."""
    primary = result.best_scores.get(config.eval.protocols[0], {})
    extra = {} if math.isnan(result.startup_s) else {"startup_s": result.startup_s}
    log_metrics(client, result.run_id, {f"best.{k}": primary[k] for k in FINAL_KEYS if k in primary}
                | {"best.epoch": result.best_epoch} | extra, step=max(result.epochs - 1, 0))
    _artifacts(client, result.run_id, config, result, result.best_cmc.get(config.eval.protocols[0]),
               result.checkpoint)
    if record_to:
        write_record(record_to, train_record(Config.model_validate(given), result, label, kind))
    set_tags(client, result.run_id, {"nvan.status": "finished"})
    client.set_terminated(result.run_id, "FINISHED")
    return result


def _worker_resources(config: Config) -> dict[str, float]:
    resources = {"CPU": config.ray.cpus_per_worker}
    if config.ray.use_gpu:
        resources["GPU"] = config.ray.gpus_per_worker
    return resources


def format_summary(result: TrainResult) -> str:
    """The final table: best epoch and scores per protocol (percent), throughput and wall time."""
    lines = [f"run {result.ray_run} (MLflow {result.run_id}): best epoch {result.best_epoch}, "
             f"{result.clips_per_s:.1f} clips/s, {result.seconds:.0f} s ({result.startup_s:.0f} s to the first step)"]
    lines.append(f"{'protocol':<14}" + "".join(f"{k:>8}" for k in FINAL_KEYS))
    for protocol, scores in result.best_scores.items():
        lines.append(f"{protocol:<14}" + "".join(f"{100 * scores.get(k, math.nan):8.2f}" for k in FINAL_KEYS))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = config_parser("Train a model on Ray Train (DDP), evaluate it, and track it in MLflow.")
    parser.add_argument("--address", help="Ray cluster to join, e.g. 'auto' (default: ray.address, else a local Ray)")
    parser.add_argument("--name", help="name of the run (default: preset, time and a random suffix)")
    parser.add_argument("--resume", metavar="RUN", help="continue the stopped run RUN from its last checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--out", type=Path, help="write the run record (JSON, see harness/records.py) here")
    args = parser.parse_args(argv)
    config = load_from_args(args)
    address = args.address or config.ray.address
    check_inputs(config)
    for option, name in (("--name", args.name), ("--resume", args.resume)):
        if name:
            check_run_name(name, option)
    if args.out:
        check_writable(args.out)
    fail_at = os.environ.get("NVAN_TEST_FAIL_AT_STEP")
    try:
        with ray_session(address, num_cpus=os.cpu_count(), log_to_driver=config.ray.log_to_driver):
            result = fit(config, name=args.name, resume=args.resume, progress=not args.no_progress,
                         fail_at_step=int(fail_at) if fail_at else None)
    except TrainingInterrupted as stop:
        resume = " ".join(["python -m harness.train", *(sys.argv[1:] if argv is None else argv)])
        resume = re.sub(r"\s--(name|resume)[= ]\S+", "", resume) + f" --resume {stop.ray_run}"
        print(f"interrupted: MLflow run closed as interrupted; its checkpoints are in "
              f"{storage.join(config.ray.storage_path, stop.ray_run)}. Continue with:\n  {resume}", file=sys.stderr)
        return 130
    print(format_summary(result))
    if args.out:
        write_record(args.out, train_record(config, result))
    return 0


def record_base(config: dict, spec, manifest: dict, cost: dict, label: str | None, kind: str) -> dict:
    """A run record before any epoch: what is trained and what it costs, no scores yet."""
    return run_record(label=label or config["model"]["preset"], kind=kind, config=config, spec=spec,
                      manifest=manifest, cost=cost, scores={}, cmc={}, best_epoch=-1, epochs=0,
                      git_commit=git_commit(), run={}, status="running")


def train_record(config: Config, result: TrainResult, label: str | None = None, kind: str = "train") -> dict:
    """The run record of `result`, trained from `config` as given (its paths unresolved)."""
    import torch

    from harness.cost import cpu_name

    checkpoint = storage.relative(result.checkpoint, config.ray.storage_path) if result.checkpoint else None
    run = {
        "mlflow_run_id": result.run_id, "ray_run": result.ray_run, "checkpoint": checkpoint,
        "checkpoint_under": "ray.storage_path", "seconds": result.seconds, "startup_s": result.startup_s,
        "clips_per_s": result.clips_per_s, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": "cuda" if config.ray.use_gpu else "cpu", "workers": config.ray.num_workers,
        "threads_per_worker": config.ray.cpus_per_worker, "cpu_capability": result.cpu_capability,
        "driver_cpu": cpu_name(), "torch": torch.__version__,
    }
    return run_record(label=label or config.model.preset, kind=kind, config=config.model_dump(mode="json"),
                      spec=result.spec, manifest=result.manifest, cost=result.cost, scores=result.best_scores,
                      cmc=result.best_cmc, best_epoch=result.best_epoch, epochs=result.epochs,
                      git_commit=git_commit(), run=run)


if __name__ == "__main__":
    run(main)
