"""MLflow: one run per training job or sweep trial; params, stepped metrics, artifacts, queries.

What a run holds (the report and any query of the store rely on it):
- experiment tag `mlflow.experimentKind` = custom_model_development (MLflow's UI opens it on its runs table);
- tags: MLflow's source tags (`mlflow.source.name`, the command; `mlflow.source.git.commit`), `nvan.kind`
  (train | trial | sweep | seeds), `nvan.label` (plot label), `nvan.status` (running,
  finished, failed, infeasible, early-stopped, interrupted), `nvan.ray_run`, `dataset`,
  `dataset.synthetic`, `preset`, `protocol` (the primary one), `device`, `software.*` (versions),
  `hardware.cpu` and `hardware.gpu` (rank 0's worker: its CPU model, its CUDA device or 'none', tagged
  with the first epoch); trials are nested under their sweep's run (`mlflow.parentRunId`);
- params: the flattened config (`model.width`, `train.lr`, ...), `git_commit`,
  `dataset.manifest_hash`, `input` (T x H x W) and the ModelSpec as `spec.*`;
- metrics, accuracy as fractions: per epoch (step = epoch) `loss`, `triplet`, `ce`, `id_acc`,
  `lr`, `clips_per_s`, `epoch_time_s`; per evaluation `rank1`..`rank20`, `map`, `minp` of the
  primary protocol and `<protocol>.<metric>` of each; at the end `best.*` (at the epoch
  eval.select chose), `best.epoch`, `startup_s`; cost (step 0) `cost.params_m`, `cost.gmacs` (per clip at
  the run's input), `cost.gmacs_paper` (at 8 x 256 x 128), `cost.latency_ms`;
- artifacts: `config.yaml`, `metrics.json`, `cmc.png`, optionally `checkpoint/`.
"""

from __future__ import annotations

import os
import subprocess
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from filelock import FileLock
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from harness.config import Config
from harness.errors import UserError
from harness.redact import redact

ROOT = Path(__file__).resolve().parents[2]
# MLflow 3 opens an experiment without a kind on its GenAI overview; a training benchmark's is the runs table.
KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_TAGS = {KIND_TAG: "custom_model_development"}
DEFAULT_URI = f"sqlite:///{ROOT / 'mlflow.db'}"
_BATCH = 100  # MLflow's limit of params (and tags) per log_batch call


def tracking_uri(configured: str | None) -> str:
    """The configured URI (params or --set), else MLFLOW_TRACKING_URI, else sqlite:///<project>/mlflow.db."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


# What decides a run's numbers besides its params (which every record holds in full). DVC's
# outputs (dvc.lock, reports/) and params.yaml change during `dvc repro`; they do not make code dirty.
CODE = ("harness", "models", "datasets", "pyproject.toml")


def git_commit() -> str:
    """HEAD's commit hash, with '-dirty' when the code (CODE, new files included) differs from it; 'unknown' outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", *CODE], cwd=ROOT,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def check_reachable(uri: str) -> None:
    """UserError within seconds when an HTTP tracking server does not answer its /health check.

    MLflow's own client retries for minutes before it gives up on an unreachable server.
    """
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
    except requests.RequestException as e:
        raise UserError(
            f"MLflow tracking server {uri} is unreachable ({type(e).__name__}); start it "
            f"(mlflow server ...), fix mlflow.tracking_uri in params.yaml or MLFLOW_TRACKING_URI, "
            f"or unset both to use the local sqlite store"
        ) from None


def connect(uri: str, experiment: str) -> tuple[MlflowClient, str]:
    """Check the store is reachable, create it and the experiment if needed; return (client, id).

    Creating a sqlite store migrates its schema, and two processes doing that at once fail
    ("duplicate column name"): a file lock beside the database serialises creation.
    """
    check_reachable(uri)
    lock = nullcontext()
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not os.access(db.parent if db.parent.exists() else db.parent.parent, os.W_OK):
            raise UserError(f"MLflow store {db} is not writable; choose a writable mlflow.tracking_uri")
        db.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(f"{db}.lock")
    with lock:
        client = MlflowClient(uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            return client, client.create_experiment(experiment, tags=EXPERIMENT_TAGS)
        if found.tags.get(KIND_TAG) is None:  # a store from before the kind was set
            client.set_experiment_tag(found.experiment_id, KIND_TAG, EXPERIMENT_TAGS[KIND_TAG])
        return client, found.experiment_id


def source_tags(command: str) -> dict[str, str]:
    """MLflow's own source tags, which its runs table and run page show: the command and the code's commit."""
    commit = git_commit()
    tags = {"mlflow.source.type": "LOCAL", "mlflow.source.name": command}
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit.removesuffix("-dirty")  # the UI links a bare hash
    return tags


def start_run(client: MlflowClient, experiment_id: str, name: str, params: dict[str, Any],
              tags: dict[str, str], parent_run_id: str | None = None, command: str = "python -m harness.train") -> str:
    """Create a run of `command` with `params` and `tags` (nested under `parent_run_id` if given); return its id."""
    all_tags = source_tags(command) | {k: redact(str(v)) for k, v in tags.items()}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id, run_name=name, tags=all_tags)
    log_params(client, run.info.run_id, params)
    return run.info.run_id


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """Log params in batches (values as strings, None as 'null', credentials of URIs redacted)."""
    items = [Param(k, "null" if v is None else redact(str(v))) for k, v in params.items()]
    for i in range(0, len(items), _BATCH):
        client.log_batch(run_id, params=items[i:i + _BATCH])


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    """Log numeric metrics at `step` (one call); non-numeric values are skipped."""
    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if items:
        client.log_batch(run_id, metrics=items)


def set_tags(client: MlflowClient, run_id: str, tags: dict[str, str]) -> None:
    """Set run tags in one call."""
    client.log_batch(run_id, tags=[RunTag(k, redact(str(v))) for k, v in tags.items()])


def run_tags(kind: str, label: str, config: Config, **more: str) -> dict[str, str]:
    """The tags a new run of `kind` (train | trial | sweep | seeds) starts with: its plot label, status running, and
    the dataset, preset, primary protocol and device it runs on; `more` adds or overrides tags."""
    return {"nvan.kind": kind, "nvan.label": label, "nvan.status": "running", "dataset": config.data.dataset,
            "preset": config.model.preset, "protocol": config.eval.primary,
            "device": "cuda" if config.ray.use_gpu else "cpu"} | more


# A run's nvan.status, and the MLflow end state it is closed with (what the UI's status column shows); a candidate
# rejected before training is recorded as a finished run of status infeasible.
END_STATES = {"finished": "FINISHED", "early-stopped": "KILLED", "failed": "FAILED", "interrupted": "KILLED",
              "preempted": "KILLED", "infeasible": "FINISHED"}


def close_run(client: MlflowClient, run_id: str, status: str) -> None:
    """Close a run as `status` (a key of END_STATES): its nvan.status tag, then MLflow's end state."""
    set_tags(client, run_id, {"nvan.status": status})
    client.set_terminated(run_id, END_STATES[status])


def find_run(client: MlflowClient, experiment_id: str, tag: str, value: str) -> str | None:
    """The id of the newest run in the experiment whose tag `tag` equals `value`, if any."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{tag}` = '{value}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None
