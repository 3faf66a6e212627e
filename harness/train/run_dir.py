"""A training run's folder under ray.storage_path: its name, the epochs its checkpoints hold, and the lock of the
one driver that trains it."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from contextlib import contextmanager, suppress
from typing import Any

import pyarrow.fs as pafs

from harness import storage
from harness.errors import UserError
from harness.redact import redact
from harness.checkpoint import EPOCH_FILE
from harness.results.records import RUN_NAME, checkpoint_epochs
from harness.checkpoint import STATE_FILE
from harness.results.tracking import log_metrics

log = logging.getLogger("harness.train")


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
    for _, metrics in sorted(saved.items()):
        known |= checkpoint_epochs(metrics)
    for epoch, metrics in sorted(known.items()):
        if epoch not in logged:
            log.info("logging epoch %d of run %s, checkpointed but not in MLflow", epoch, run_id)
            log_metrics(client, run_id, {k: v for k, v in metrics.items() if k not in skip}, step=epoch)
    return logged | set(known)


LOCK_FILE = ".lock"  # in the run folder while a driver trains it (a local folder); on an object store, .lock-<claim>
GUARD_FILE = ".lock.guard"  # in a local run folder: flock-ed while a driver judges, takes, refreshes or drops the lock
PARAMS_FILE = "params.json"  # in the run folder: the params that decide its results, as it was started
HEARTBEAT_S = 30.0  # the lock's holder rewrites it this often
STALE_S = 600.0  # a lock not rewritten for this long was left by a driver that died (on any host)
CLAIM_POLL_S = 1.0  # on an object store, how often the earliest of several claims looks whether the others withdrew


class RunLock:
    """The right to train one run, held from the first step to the last record.

    Two drivers with one name would share a checkpoint folder and interleave their epochs. The
    lock names its holder (host, pid, since) and is rewritten every HEARTBEAT_S. A lock whose holder
    is gone (the same host and a dead pid, or no heartbeat for STALE_S) is taken over, so a driver
    killed with SIGKILL does not block its --resume.

    In a local (or mounted) folder the lock is <run>/.lock, and every step on it (judge the holder,
    take over a dead one's lock, write ours, refresh, release) happens under an exclusive flock on
    <run>/.lock.guard: one atomic decision however many drivers race, and the kernel drops a flock
    whose process died, SIGKILL included. Over NFS, Linux maps flock to NFS byte-range locks, which
    need the lock service (NFSv4, or lockd for v3); a mount with `nolock` or `local_lock=all` keeps
    them to one machine.

    pyarrow's filesystems offer no create-if-absent, compare-and-swap or lock (S3's and GCS's
    conditional writes are not exposed), so on an object store each driver writes a claim of its own,
    <run>/.lock-<time>-<token>, then lists the claims: it holds the lock only when it sees no other
    one. As writes and listings are linearizable (S3 since 2020, GCS, Azure, MinIO, HDFS), two
    drivers can never both see only their own, whoever is slow. Only a claim judged gone (a dead pid
    on this host, or not rewritten for STALE_S) is removed, by its exact name, never a fresh one; one
    that cannot be read is waited for. Of claims made at the same moment the earliest waits for the
    later ones to withdraw. Limits: a store whose listings lag its writes (some S3-compatible stores,
    or one behind a caching proxy) can let two drivers in; a driver on another host that died while
    claiming holds new drivers off until its claim is STALE_S old; the claims' order follows the
    hosts' clocks, so with skewed clocks a later driver may be the one that waits.
    """

    def __init__(self, run_dir: str, name: str) -> None:
        self.run_dir, self.name = run_dir, name
        self.location = storage.join(run_dir, LOCK_FILE)
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,
                      "since": time.time()}
        # On an object store, our claim: named by its time, so the earliest of claims made at once comes first.
        self.claim = f"{LOCK_FILE}-{time.time_ns():020d}-{self.owner['token']}"
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> RunLock:
        try:
            if storage.is_uri(self.run_dir):
                self._claim()
            else:
                with self._guard():
                    self._take()
        except OSError as e:  # the storage failed us: no lock is judged gone for it
            raise UserError(f"run {self.name}: cannot read or write its lock in {redact(self.run_dir)} "
                            f"({type(e).__name__}: {redact(str(e))}); check that ray.storage_path is reachable and "
                            f"writable, then run again") from None
        self._beat = threading.Thread(target=self._heartbeat, name=f"lock {self.name}", daemon=True)
        self._beat.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        try:
            if storage.is_uri(self.run_dir):
                storage.delete(storage.join(self.run_dir, self.claim))
                return
            with self._guard():
                if self._ours():
                    storage.delete(self.location)
        except OSError as e:
            log.warning("run %s: could not release its lock (%s); the next driver takes it over, as this process "
                        "will be gone", self.name, e)

    def _text(self, held: bool = True) -> str:
        return json.dumps(self.owner | {"beat": time.time(), "held": held})

    def _refuse(self, held: dict[str, Any], location: str) -> UserError:
        return UserError(f"run {self.name} is being trained by process {held.get('pid')} on {held.get('host')} "
                         f"(since {_when(held.get('since'))}; its lock {redact(location)}); two drivers cannot train "
                         f"one run: wait for it, use another --name, or, if that process is gone, delete the lock file")

    # A local folder: one lock file, every step under the guard's flock.

    @contextmanager
    def _guard(self):
        """Hold the exclusive flock on the run's guard file (blocking until the driver holding it is done)."""
        fd = os.open(storage.join(self.run_dir, GUARD_FILE), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _take(self) -> None:
        held = _read(self.location)
        if held is not None and not _gone(held):
            raise self._refuse(held, self.location)
        if held is not None:
            log.warning("run %s: taking over the lock of process %s on %s, which is gone", self.name,
                        held.get("pid"), held.get("host"))
        storage.write_text(self.location, self._text())

    def _ours(self) -> bool:
        held = _read(self.location)
        return held is not None and held.get("token") == self.owner["token"]

    # An object store: a claim per driver; the lock is held by the one that sees no other live claim.

    def _claim(self) -> None:
        mine = storage.join(self.run_dir, self.claim)
        try:
            self._contend(mine)
        except BaseException:
            with suppress(OSError):  # a claim left behind holds off others until this process is gone
                storage.delete(mine)
            raise

    def _contend(self, mine: str) -> None:
        """Write our claim and list the others until ours is the only one (won), or another holds the lock or came
        first (UserError). The earliest claim waits for the later ones to withdraw, and any for a claim it could not
        read (being rewritten, or withdrawn since the listing) to be read or gone."""
        waited = False
        while True:
            storage.write_text(mine, self._text(held=False))  # each round: a fresh beat, so it never looks stale
            others, unread = self._other_claims()
            if not others and not unread:
                storage.write_text(mine, self._text())
                return
            held = [(name, c) for name, c in others.items() if c.get("held")]
            if held:
                raise self._refuse(held[0][1], storage.join(self.run_dir, held[0][0]))
            first = min(others, default=None)
            if first is not None and first < self.claim:
                raise UserError(f"run {self.name} is being started by process {others[first].get('pid')} on "
                                f"{others[first].get('host')} at this moment (its claim "
                                f"{redact(storage.join(self.run_dir, first))} came first); two drivers cannot train "
                                f"one run: use another --name, or, if that process is gone, delete its claim")
            if not waited:
                log.info("run %s: %d other driver(s) claim its lock at the same moment; waiting for them to "
                         "withdraw", self.name, len(others) + len(unread))
                waited = True
            time.sleep(CLAIM_POLL_S)

    def _other_claims(self) -> tuple[dict[str, dict[str, Any]], set[str]]:
        """The other claims on the lock whose drivers are not gone, and those that could not be read. Only a claim
        judged gone is deleted (by its name, never a fresh one): its driver is, or it was not rewritten for STALE_S."""
        fs, path = storage.resolve(self.run_dir)
        others, unread = {}, set()
        for entry in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
            name = posixpath.basename(entry.path)
            if entry.type != pafs.FileType.File or not name.startswith(f"{LOCK_FILE}-") or name == self.claim:
                continue
            location = storage.join(self.run_dir, name)
            try:
                claim = _read(location)
            except OSError:
                claim = None
            if claim and not _gone(claim):
                others[name] = claim
            elif claim or entry.mtime is not None and time.time() - entry.mtime.timestamp() > STALE_S:
                log.warning("run %s: removing the lock claim %s, whose driver is gone", self.name, name)
                storage.delete(location)
            else:
                unread.add(name)
        return others, unread

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                if not self._refresh():
                    log.error("run %s: its lock was taken over (this driver was judged gone); another driver may "
                              "now train it too", self.name)
                    return
            except OSError as e:  # a full disk or a storage hiccup: the lock stays, only older
                log.warning("run %s: could not refresh its lock (%s)", self.name, e)

    def _refresh(self) -> bool:
        """Rewrite the lock with a new beat; False if it is no longer ours."""
        if storage.is_uri(self.run_dir):
            mine = storage.join(self.run_dir, self.claim)
            if not storage.exists(mine):
                return False
            storage.write_text(mine, self._text())
            return True
        with self._guard():
            if not self._ours():
                return False
            storage.write_text(self.location, self._text())
            return True


def _read(location: str) -> dict[str, Any] | None:
    """The holder a lock (or claim) names; None if there is none, {} if it is not a holder's JSON (a driver died while
    writing it, or it is not ours). OSError if the storage cannot be read: that says nothing of the holder."""
    try:
        held = json.loads(storage.read_text(location))
    except FileNotFoundError:
        return None
    except ValueError:
        return {}
    return held if isinstance(held, dict) else {}


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
    beat = held.get("beat")
    return not isinstance(beat, (int, float)) or time.time() - beat > STALE_S


def _when(stamp: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if isinstance(stamp, (int, float)) \
        else "an unknown time"
