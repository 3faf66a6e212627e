"""What the Ray Train controller does after each epoch's report (MLflow, the live record), and the driver's progress."""

from __future__ import annotations

import posixpath
import threading
from typing import Any, Callable

from pyarrow.fs import FileType

from datasets.progress import Progress
from harness import storage
from harness.evaluate.queries import queries_path
from harness.checkpoint import QUERIES_FILE
from harness.results.records import history_of, write_record
from harness.results.tracking import log_metrics, set_tags


class MlflowEpochLogger:
    """Logs each epoch's numeric metrics (rank 0's report) to one MLflow run, from the Ray controller.

    Checkpoints are sparse (train.checkpoint_every) and a resume starts after the last one, so
    workers restarted after a failure or a stop train and report again the epochs since: those
    already logged (`logged`) are skipped, every other epoch is logged once. The first report also
    tags the run with the hardware rank 0's worker trains on (hardware.cpu, hardware.gpu: 'none' on a CPU).
    """

    def __init__(self, uri: str, run_id: str, logged: set[int] | None = None) -> None:
        self.uri, self.run_id, self._client, self.logged = uri, run_id, None, set(logged or ())
        self.tagged = False

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        from mlflow import MlflowClient

        self._client = self._client or MlflowClient(self.uri)
        if not self.tagged:  # once per process: a resume may run on other hardware, and tags the run again
            set_tags(self._client, self.run_id, {"hardware.cpu": metrics[0].get("worker_cpu"),
                                                 "hardware.gpu": metrics[0].get("gpu") or "none"})
            self.tagged = True
        epoch = int(metrics[0]["epoch"])
        if epoch in self.logged:
            return
        self.logged.add(epoch)
        skip = ("epoch", "checkpoint_score", "best_value", "first_step_at")
        numbers = {k: v for k, v in metrics[0].items() if k not in skip}
        log_metrics(self._client, self.run_id, numbers, step=epoch)


class LiveRecord:
    """Rewrites a run's record after every epoch, before MLflow or Tune hear of the epoch (runs in the controller).

    Whatever stops the run, the record holds every epoch the others saw, so a sweep's table is
    built from records alone. With each checkpoint, the chosen evaluation's per-query outcomes are
    copied beside the record first. `epochs` holds the numbers of the epochs a resumed run's checkpoint
    kept ({0-based epoch: numbers}); the history written runs up to the epoch just reported, as a restarted
    worker reports again the epochs after its checkpoint.
    """

    def __init__(self, path: str, record: dict[str, Any], epochs: dict[int, dict[str, Any]] | None = None) -> None:
        self.path, self.record, self.epochs = path, record, dict(epochs or {})

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        if checkpoint is not None:
            source = posixpath.join(checkpoint.path, QUERIES_FILE)
            if checkpoint.filesystem.get_file_info(source).type == FileType.File:
                with checkpoint.filesystem.open_input_stream(source) as f:
                    storage.write_bytes(queries_path(self.path), f.read())
        first = metrics[0]
        self.epochs[first["epoch"]] = first
        scores, cmc = first.get("best_scores") or {}, first.get("best_cmc") or {}
        write_record(self.path, self.record | {
            "status": "running", "scores": {p: s | {"cmc": cmc.get(p)} for p, s in scores.items()},
            "best_epoch": first.get("best_epoch", -1), "epochs": first["epoch"] + 1,
            "history": history_of({e: m for e, m in self.epochs.items() if e <= first["epoch"]})})



def controller_callback(cls, *args):
    """An instance of `cls` as a Ray Train UserCallback, which runs in the Train controller."""
    from ray.train import UserCallback

    # Mixed in at call time so that importing this module does not import Ray.
    return type(cls.__name__ + "Callback", (cls, UserCallback), {})(*args)


def progress_bars(queue, done: threading.Event, stop: Callable[[], bool]) -> str:
    """Rank 0's steps as a bar per epoch on a terminal, else as log lines (datasets.progress.Progress), until the
    run is done or `stop()` says the caller should stop watching; returns why it ended: done, stopped or gone."""
    from ray.exceptions import RayActorError
    from ray.util.queue import Empty

    progress, current, ended = None, None, "stopped"
    while not stop():
        try:
            epoch, step, steps, loss, clips = queue.get(timeout=0.5)
        except Empty:  # Ray raises it wrapped in RayTaskError(Empty), a subclass
            if done.is_set():
                ended = "done"
                break
            continue
        except RayActorError:
            # The queue's actor is gone: a SIGTERM to the whole process group (scancel) stops Ray's
            # processes too. There is no more progress to show; the caller decides what the stop was.
            ended = "gone"
            break
        if epoch != current:
            if progress:
                progress.close()
            progress, current = Progress(steps, f"epoch {epoch}", "steps"), epoch
        progress.update(step - progress.done)
        if progress.bar is not None:
            progress.bar.set_postfix(loss=f"{loss:.3f}", clips_s=f"{clips:.1f}", refresh=True)
    if progress:
        progress.close()
    return ended
