"""A training run's folder under ray.storage_path: its name, and the epochs its checkpoints hold."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from typing import Any

from harness import storage
from harness.cli import UserError
from harness.redact import redact
from harness.results.records import EPOCH_FILE
from harness.train.checkpoint import STATE_FILE
from harness.results.tracking import log_metrics

log = logging.getLogger("harness.train")

RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_run_name(name: str, option: str) -> None:
    """UserError unless `name` is a plain folder name (it becomes <ray.storage_path>/<name>)."""
    if not RUN_NAME.fullmatch(name) or name in (".", ".."):
        raise UserError(f"{option} {name!r}: a run name is a folder under ray.storage_path, so it takes letters, "
                        f"digits, '.', '_' and '-', starting with a letter or digit (no '/' or '..')")


def saved_epochs(run_dir: str) -> dict[int, dict[str, Any]]:
    """The epochs whose complete checkpoints a Ray run (a folder or URI) holds: their reported metrics and "folder".

    Complete: its epoch.json parses and every file it lists has the size it recorded (a checkpoint the
    disk filled up or a kill cut short while Ray copied it to storage is skipped, not trusted).
    """
    found = {}
    for folder in storage.list_dirs(run_dir):
        if not folder.startswith("checkpoint_"):
            continue
        try:
            metrics = json.loads(storage.read_text(storage.join(run_dir, folder, EPOCH_FILE)))
            files = metrics.get("files") or {STATE_FILE: None}  # checkpoints before the sizes were kept
            if not _whole(storage.join(run_dir, folder), files):
                log.warning("skipping checkpoint %s of run %s: it was not written whole", folder, redact(run_dir))
                continue
            epoch = int(metrics["epoch"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a checkpoint being written when the run stopped
        # Two copies of one epoch (Ray's retry of a persist): the later folder name wins, as Ray's would.
        if epoch not in found or folder > found[epoch]["folder"]:
            found[epoch] = metrics | {"folder": folder}
    return found


def _whole(folder: str, files: dict[str, int | None]) -> bool:
    """Whether every file of a checkpoint folder is there with the size recorded for it (None: any size)."""
    for name, size in files.items():
        found = storage.size(storage.join(folder, name))
        if found is None or (size is not None and found != size):
            return False
    return True


def latest_checkpoint(run_dir: str) -> str | None:
    """The location of the newest complete checkpoint of a Ray run, None if it has none."""
    saved = saved_epochs(run_dir)
    return storage.join(run_dir, saved[max(saved)]["folder"]) if saved else None


SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train's list of a run's checkpoints


def repair_snapshot(run_dir: str) -> None:
    """Remove Ray Train's checkpoint list of a run when it is not whole JSON (a full disk leaves it empty), so the
    run can start again; the resume then comes from the checkpoints on disk (`latest_checkpoint`)."""
    location = storage.join(run_dir, SNAPSHOT_FILE)
    try:
        json.loads(storage.read_text(location))
    except FileNotFoundError:
        return
    except (OSError, ValueError):
        log.warning("run %s: Ray Train's %s is not whole (a full disk or a kill while it was written); removing it, "
                    "the run resumes from its newest complete checkpoint", redact(run_dir), SNAPSHOT_FILE)
        storage.delete(location)


def log_missing_epochs(client, run_id: str, saved: dict[int, dict[str, float]]) -> set[int]:
    """Log the metrics of checkpointed epochs that MLflow lacks (the run stopped between the two);
    return the epochs MLflow now holds. An epoch retrained after a resume is logged if and only if
    it is not among them, so every epoch is logged once, however the run stopped."""
    logged = {m.step for m in client.get_metric_history(run_id, "loss")}
    skip = ("epoch", "checkpoint_score", "best_value", "first_step_at", "folder", "files", "history", "worker")
    # Each checkpoint holds its own epoch's numbers and every earlier epoch's (their `history`).
    known: dict[int, dict] = {}
    for epoch, metrics in sorted(saved.items()):
        known |= {int(e): m for e, m in (metrics.get("history") or {}).items()} | {epoch: metrics}
    for epoch, metrics in sorted(known.items()):
        if epoch not in logged:
            log.info("logging epoch %d of run %s, checkpointed but not in MLflow", epoch, run_id)
            log_metrics(client, run_id, {k: v for k, v in metrics.items() if k not in skip}, step=epoch)
    return logged | set(known)


LOCK_FILE = ".lock"  # in the run folder while a driver trains it
PARAMS_FILE = "params.json"  # in the run folder: the params that decide its results, as it was started
HEARTBEAT_S = 30.0  # the lock's holder rewrites it this often
STALE_S = 600.0  # a lock not rewritten for this long was left by a driver that died (on any host)


class RunLock:
    """The right to train one run: <run folder>/.lock, held from the first step to the last record.

    Two drivers with one name would share a checkpoint folder and interleave their epochs. The
    lock names its holder (host, pid, since) and is rewritten every HEARTBEAT_S. A lock whose holder
    is gone (the same host and a dead pid, or no heartbeat for STALE_S) is taken over, so a driver
    killed with SIGKILL does not block its --resume. On a local folder the lock is created with
    O_EXCL, so two drivers starting at once cannot both get it; on an object store, where pyarrow has
    no create-if-absent, the lock is written, then read back after a moment, and the later writer
    wins: two drivers within that moment are told apart, not closer ones (the README says so).
    """

    def __init__(self, run_dir: str, name: str) -> None:
        self.location, self.name = storage.join(run_dir, LOCK_FILE), name
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,
                      "since": time.time()}
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> RunLock:
        held = self._holder()
        if held is not None and not _gone(held):
            raise UserError(f"run {self.name} is being trained by process {held.get('pid')} on "
                            f"{held.get('host')} (since {_when(held.get('since'))}; its lock "
                            f"{redact(self.location)}); two drivers cannot train one run: wait for it, use "
                            f"another --name, or, if that process is gone, delete the lock file")
        if held is not None:
            log.warning("run %s: taking over the lock of process %s on %s, which is gone", self.name,
                        held.get("pid"), held.get("host"))
            storage.delete(self.location)
        self._take()
        self._beat = threading.Thread(target=self._heartbeat, name=f"lock {self.name}", daemon=True)
        self._beat.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        held = self._holder()
        if held is not None and held.get("token") == self.owner["token"]:
            storage.delete(self.location)

    def _holder(self) -> dict[str, Any] | None:
        try:
            held = json.loads(storage.read_text(self.location))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # half written or not ours: treated as left by a dead driver
        return held if isinstance(held, dict) else {}

    def _take(self) -> None:
        text = json.dumps(self.owner | {"beat": time.time()})
        if not storage.is_uri(self.location):
            try:
                fd = os.open(self.location, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                raise UserError(f"run {self.name} was just started by another driver (its lock "
                                f"{self.location} appeared a moment ago); use another --name") from None
            with os.fdopen(fd, "w") as f:
                f.write(text)
            return
        storage.write_text(self.location, text)
        time.sleep(1.0)  # let a racing driver's write land, then see who won
        held = self._holder()
        if held is None or held.get("token") != self.owner["token"]:
            raise UserError(f"run {self.name} was just started by another driver (it holds the lock "
                            f"{redact(self.location)}); use another --name")

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                storage.write_text(self.location, json.dumps(self.owner | {"beat": time.time()}))
            except OSError as e:  # a full disk or a storage hiccup: the lock stays, only older
                log.warning("run %s: could not refresh its lock (%s)", self.name, e)


def _gone(held: dict[str, Any]) -> bool:
    """Whether the lock's holder is gone: its pid dead on this host, no heartbeat for STALE_S, or an unreadable lock."""
    if not held:
        return True
    if held.get("host") == socket.gethostname() and isinstance(held.get("pid"), int):
        try:
            os.kill(held["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return time.time() - float(held.get("beat") or 0) > STALE_S


def _when(stamp: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(stamp))) if stamp else "an unknown time"
