"""A training run's folder under ray.storage_path: its name, and the epochs its checkpoints hold."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from harness import storage
from harness.cli import UserError
from harness.results.records import EPOCH_FILE
from harness.results.tracking import log_metrics

log = logging.getLogger("harness.train")

RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


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
