"""What a finished training job leaves: its TrainResult, the run record built from it, the console summary."""

from __future__ import annotations

import math
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from harness import storage
from harness.config import Config
from harness.evaluate.queries import queries_path, write_queries
from harness.evaluate.statistics import query_interval, table_values
from harness.results.records import run_record, write_record
from harness.results.tracking import git_commit
from harness.versions import software_versions

FINAL_KEYS = ("rank1", "rank5", "rank10", "rank20", "map", "minp")


@dataclass(frozen=True)
class TrainResult:
    """What a finished training job leaves: its MLflow run, the selected epoch (eval.select), its scores and CMC,
    checkpoints, cost, every epoch's history and the hardware rank 0's worker ran on."""

    run_id: str
    ray_run: str
    best_epoch: int
    best_scores: dict[str, dict[str, float]]
    best_cmc: dict[str, list[float]]
    epochs: int
    checkpoint: str | None  # the latest: where the run resumes
    clips_per_s: float
    seconds: float
    startup_s: float
    cost: dict[str, Any]
    spec: Any  # ModelSpec
    manifest: dict[str, Any]
    cpu_capability: str | None = None  # the CPU kernels torch ran in the workers (e.g. AVX2)
    queries: pl.DataFrame | None = None  # per-query outcomes of the selected evaluation (harness.evaluate.queries)
    precision: dict[str, Any] | None = None  # the TF32 settings the workers trained with (harness.precision)
    best_checkpoint: str | None = None  # the selected epoch's: the weights best_scores are of
    history: list[dict[str, Any]] = field(default_factory=list)  # the record's (records.history_of)
    worker_cpu: str | None = None  # rank 0's worker's CPU model
    gpu: str | None = None  # rank 0's CUDA device; None on a CPU


def record_base(config: dict, spec, manifest: dict, cost: dict, label: str | None, kind: str) -> dict:
    """A run record before any epoch: what is trained and what it costs, no scores yet."""
    return run_record(label=label or config["model"]["preset"], kind=kind, config=config, spec=spec,
                      manifest=manifest, cost=cost, scores={}, cmc={}, best_epoch=-1, epochs=0,
                      git_commit=git_commit(), run={}, status="running")


def intervals(queries: pl.DataFrame | None, protocols: list[str]) -> dict[str, dict[str, list[float]]]:
    """Each protocol's 95 % interval of every score over identity-clustered queries ({protocol: {score: [lo, hi]}},
    fractions); one run, so no seed variation is in it."""
    if queries is None:
        return {}
    return {p: query_interval(*table_values(queries, p)) for p in protocols}


def train_record(config: Config, result: TrainResult, label: str | None = None, kind: str = "train") -> dict:
    """The run record of `result`, trained from `config` as given (its paths unresolved), with the 95 % query
    interval of every score."""
    import torch

    from harness.measure.hardware import cpu_name

    def under_storage(checkpoint: str | None) -> str | None:
        return storage.relative(checkpoint, config.ray.storage_path) if checkpoint else None

    run = {
        "mlflow_run_id": result.run_id, "ray_run": result.ray_run, "checkpoint": under_storage(result.checkpoint),
        "best_checkpoint": under_storage(result.best_checkpoint),
        "checkpoint_under": "ray.storage_path", "seconds": result.seconds, "startup_s": result.startup_s,
        "clips_per_s": result.clips_per_s, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": "cuda" if config.ray.use_gpu else "cpu", "workers": config.ray.num_workers,
        "threads_per_worker": config.ray.cpus_per_worker, "cpu_capability": result.cpu_capability,
        "driver_cpu": cpu_name(), "worker_cpu": result.worker_cpu, "gpu": result.gpu, "torch": torch.__version__,
        "precision": result.precision, "software": software_versions(),
    }
    return run_record(label=label or config.model.preset, kind=kind, config=config.model_dump(mode="json"),
                      spec=result.spec, manifest=result.manifest, cost=result.cost, scores=result.best_scores,
                      cmc=result.best_cmc, best_epoch=result.best_epoch, epochs=result.epochs,
                      git_commit=git_commit(), run=run, history=result.history,
                      ci95=intervals(result.queries, list(result.best_scores)))


def write_run(record_to: Path | str, record: dict, queries: pl.DataFrame | None) -> None:
    """Write a run's per-query outcomes beside its record, then the record (whose presence promises both)."""
    if queries is not None:
        write_queries(queries_path(record_to), queries)
    write_record(record_to, record)


def format_summary(result: TrainResult) -> str:
    """The final table: best epoch and scores per protocol (percent), throughput and wall time."""
    lines = [f"run {result.ray_run} (MLflow {result.run_id}): best epoch {result.best_epoch}, "
             f"{result.clips_per_s:.1f} clips/s, {result.seconds:.0f} s ({result.startup_s:.0f} s to the first step)"]
    lines.append(f"{'protocol':<14}" + "".join(f"{k:>8}" for k in FINAL_KEYS))
    for protocol, scores in result.best_scores.items():
        lines.append(f"{protocol:<14}" + "".join(f"{100 * scores.get(k, math.nan):8.2f}" for k in FINAL_KEYS))
    return "\n".join(lines)
