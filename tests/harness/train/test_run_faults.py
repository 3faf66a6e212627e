"""The faults a cluster throws at a training run, each as the real thing where it is a process-level one:
a reused name, two drivers at once, many racing for a dead driver's lock, SIGTERM to the driver and to its
process group (of one run and of --all-seeds), a stop right after a checkpoint, a full disk, a corrupt or truncated
store, and the rendezvous port a 2-rank job opens."""

from __future__ import annotations

import json
import multiprocessing
import os
import posixpath
import re
import shutil
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from mlflow import MlflowClient

from datasets.errors import DatasetError
from harness import preemption, storage
from harness.errors import UserError
from harness.prepared import prepared_dataset
from harness.results.tracking import find_run, set_tags
from harness.preemption import Preempted
from harness.train.callbacks import MlflowEpochLogger, progress_bars
from harness.train.driver import fit, run_watched
from harness.train.run_dir import GUARD_FILE, LOCK_FILE, SNAPSHOT_FILE, RunLock, repair_snapshot, saved_epochs
from harness.cluster import ray_session
from lock_workers import race

ROOT = Path(__file__).resolve().parents[3]
# A safety net against a hang, not a speed limit: on a loaded 2-core machine a step can take 100x longer.
HANG_S = 1800

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    with ray_session(None, num_cpus=2):
        yield


def steps(client: MlflowClient, run_id: str, key: str = "loss") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def mlflow_run(tmp_path: Path, ray_run: str):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("nvan-bench").experiment_id
    return client, client.get_run(find_run(client, experiment, "nvan.ray_run", ray_run))


@pytest.mark.slow(seconds=90)
def test_a_name_is_an_identity(local_ray, tiny_config, tmp_path):
    config = tiny_config("train.epochs=2", "train.steps_per_epoch=2")
    first = fit(config, name="base1", progress=False)
    # The name is taken: a new run under it would continue the old one, so it is refused.
    with pytest.raises(UserError, match=r"run name base1 is taken: .* --resume base1"):
        fit(tiny_config("train.epochs=3", "train.steps_per_epoch=2"), name="base1", progress=False)
    # A resume must decide its results as the run did; the keys that differ are named.
    with pytest.raises(UserError, match=r"train\.lr: 0\.001 when it started, 0\.005 now.*train\.epochs=N"):
        fit(tiny_config("train.epochs=3", "train.steps_per_epoch=2", "train.lr=5e-3"), resume="base1", progress=False)
    with pytest.raises(UserError, match=r"train\.epochs: 2 when it started, 1 now"):
        fit(tiny_config("train.epochs=1", "train.steps_per_epoch=2"), resume="base1", progress=False)
    # ... but train.epochs may grow on purpose: the run trains on, each epoch logged once.
    more = fit(tiny_config("train.epochs=3", "train.steps_per_epoch=2"), resume="base1", progress=False)
    client = MlflowClient(config.mlflow.tracking_uri)
    assert more.run_id == first.run_id and more.epochs == 3 and steps(client, more.run_id) == [0, 1, 2]
    # The MLflow run alone holds the name too (the checkpoints were deleted).
    shutil.rmtree(tmp_path / "ray" / "base1")
    with pytest.raises(UserError, match=rf"MLflow run {first.run_id} .* has it"):
        fit(config, name="base1", progress=False)
    assert not (tmp_path / "ray" / "base1" / LOCK_FILE).exists()  # every refusal released the lock


def test_the_run_lock(tmp_path, s3_storage):
    for root in (str(tmp_path / "run"), storage.join(s3_storage, "locked")):
        storage.make_dirs(root)
        with RunLock(root, "locked"):
            with pytest.raises(UserError, match=r"being trained by process \d+ on .*delete the lock file"):
                RunLock(root, "locked").__enter__()
        assert not storage.exists(storage.join(root, LOCK_FILE))
    # A lock left by a process that is gone (SIGKILL) is taken over, not obeyed.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    storage.write_text(storage.join(str(tmp_path / "run"), LOCK_FILE), json.dumps(
        {"host": os.uname().nodename, "pid": int(dead.stdout), "since": time.time(), "beat": time.time()}))
    with RunLock(str(tmp_path / "run"), "locked"):
        pass


def dead_pid() -> int:
    """The pid of a process that has exited."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


@pytest.mark.slow(seconds=120, cores=2)
@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_dead_drivers_lock_is_taken_over_by_exactly_one_of_many(request, tmp_path, where):
    """Racers released together by a barrier, round after round, on a lock whose holder died: one takes it over, the
    rest are refused (before, locally: in every run of this test some round ended with two or three holders, each
    having deleted the lock it judged stale, which by then was another racer's fresh one)."""
    racers, rounds = (12, 25) if where == "local" else (8, 12)
    root = str(tmp_path / "run") if where == "local" else storage.join(request.getfixturevalue("s3_storage"), "raced")
    storage.make_dirs(root)
    gone = {"host": os.uname().nodename, "pid": dead_pid(), "since": time.time(), "beat": time.time(), "held": True}
    # The stale lock as each backend keeps it: the lock file, or the first claim of a dead driver.
    stale = storage.join(root, LOCK_FILE if where == "local" else f"{LOCK_FILE}-{1:020d}-dead")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["lock_workers"])  # imported once, not once per racer
    barrier, wins = context.Barrier(racers + 1), context.Array("i", rounds)
    procs = [context.Process(target=race, args=(root, rounds, barrier, wins)) for _ in range(racers)]
    for proc in procs:
        proc.start()
    try:
        for _ in range(rounds):
            storage.write_text(stale, json.dumps(gone | {"token": uuid.uuid4().hex}))
            for _ in range(3):  # go; every racer tried; the winner let go
                barrier.wait(timeout=HANG_S)
    except BaseException:
        barrier.abort()
        raise
    finally:
        for proc in procs:
            proc.join(HANG_S)
    assert [proc.exitcode for proc in procs] == [0] * racers
    assert list(wins) == [1] * rounds
    assert lock_files(root) == [], "the last winner let go, and the stale lock was removed"


HOLD_THE_GUARD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(3600)
"""


def test_a_driver_killed_while_judging_the_lock_blocks_no_one(tmp_path):
    """SIGKILL in the middle of a takeover (the guard's flock held, the dead driver's lock still there): the kernel
    drops the flock with the process, and the next driver takes the lock over."""
    root = tmp_path / "run"
    root.mkdir()
    (root / LOCK_FILE).write_text(json.dumps({"host": os.uname().nodename, "pid": dead_pid(), "beat": time.time()}))
    killed = subprocess.Popen([sys.executable, "-c", HOLD_THE_GUARD, str(root / GUARD_FILE)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert killed.stdout.readline().strip() == "held"
    finally:
        killed.kill()
        killed.wait()
    with RunLock(str(root), "locked") as lock:
        assert json.loads((root / LOCK_FILE).read_text())["token"] == lock.owner["token"]
    assert lock_files(str(root)) == []


def lock_files(root: str) -> list[str]:
    """The lock and lock claims in a run folder (local or on an object store), the guard file aside."""
    fs, path = storage.resolve(root)
    names = (posixpath.basename(f.path) for f in fs.get_file_info(pafs.FileSelector(path)))
    return sorted(name for name in names if name.startswith(LOCK_FILE) and name != GUARD_FILE)


@pytest.mark.slow(seconds=70, cores=2)
def test_two_drivers_cannot_train_one_name(tiny_sets, tmp_path):
    args = [sys.executable, "-m", "harness.train", *tiny_sets, "--name", "dup", "--no-progress"]
    drivers = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
               for _ in range(2)]
    done = [d.communicate(timeout=HANG_S) for d in drivers]
    codes = sorted(d.returncode for d in drivers)
    assert codes == [0, 2], [err[-1500:] for _, err in done]
    refused = next(err for d, (_, err) in zip(drivers, done) if d.returncode == 2)
    assert re.search(r"being trained by process|was just started by another driver|is taken", refused), refused
    assert "Traceback" not in refused


def start_and_stop(args: list[str], ready: Callable[[], bool], how: str) -> tuple[subprocess.Popen, str, float]:
    """Start a training command, send `how` (sigint, sigterm, or sigterm to its process group) as soon as `ready()`
    (e.g. its first checkpoint is on disk); return the process, its stderr and the seconds from the signal to its
    exit."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            start_new_session=True, env=os.environ | {"NVAN_PROGRESS_INTERVAL_S": "0"})
    try:
        deadline = time.time() + HANG_S
        while not ready() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        sent = time.time()
        if how == "group":
            os.killpg(proc.pid, signal.SIGTERM)  # as `scancel` and a Kubernetes pod stop do: every process at once
        else:
            proc.send_signal(signal.SIGINT if how == "sigint" else signal.SIGTERM)
        _, err = proc.communicate(timeout=HANG_S)
        return proc, err, time.time() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


# A SIGTERM while the driver's main thread waits in ray.get (for the progress queue), as it does most of a run.
SIGTERM_IN_RAY_GET = """
import os, signal, threading
from ray.util.queue import Queue
from harness import preemption
from harness.cluster import ray_session

preemption.raise_on_sigterm()
with ray_session(None, num_cpus=1):
    queue = Queue()
    threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
    try:
        queue.get(timeout=120)
    except KeyboardInterrupt:
        print("stopped; preempted:", preemption.requested())
"""


@pytest.mark.slow(seconds=20)
def test_a_sigterm_during_ray_get_is_a_preemption():
    """Ray's wait passes on only a KeyboardInterrupt from a signal handler: a Preempted of any other type came out of
    ray.get as a SystemError (and the run ended with exit 1 instead of 143 as preempted)."""
    done = subprocess.run([sys.executable, "-c", SIGTERM_IN_RAY_GET], capture_output=True, text=True, cwd=ROOT,
                          timeout=HANG_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stopped; preempted: True" in done.stdout


def test_progress_ends_quietly_when_the_queue_is_gone(local_ray):
    """A SIGTERM to the whole process group stops the progress queue's actor too: the bars end, without an error."""
    import ray
    from ray.util.queue import Queue

    queue = Queue()
    queue.put((0, 1, 2, 0.5, 10.0))
    ray.kill(queue.actor)
    # before: ActorDiedError out of queue.get; a loop that ignored the dead actor would never return
    assert progress_bars(queue, threading.Event(), stop=lambda: False) == "gone"


def test_a_preemption_whose_exception_was_lost_still_stops_the_watch(monkeypatch):
    """The SIGTERM flag is set before the handler raises: if a library swallows the exception, the watch loop raises
    Preempted itself instead of training on to the end."""
    release = threading.Event()
    monkeypatch.setattr(preemption, "requested", lambda: True)
    try:
        with pytest.raises(Preempted):
            run_watched(lambda: release.wait(60), None)  # before: returned after 60 s, as a run that trained on
    finally:
        release.set()


@pytest.mark.slow(seconds=110)
@pytest.mark.parametrize("how", ["sigint", "sigterm", "group"])
def test_a_stopped_run_resumes_with_every_epoch_logged_once(cli, tiny_sets, tmp_path, how):
    """Ctrl-C, SIGTERM (a preemption) or SIGTERM to the whole process group right after a checkpoint: the MLflow run
    is closed as interrupted or preempted with the exit code a scheduler expects (or, for the group, Ray may end the
    driver first: see below), and --resume trains on from the newest checkpoint on disk, logging every epoch exactly
    once (none twice, none lost)."""
    args = [sys.executable, "-m", "harness.train", *tiny_sets, "--set", "train.epochs=8", "--set",
            "train.steps_per_epoch=3", "--set", "eval.every=2", "--name", "stopped"]
    def checkpointed() -> bool:
        return any((tmp_path / "ray" / "stopped").glob("checkpoint_*/epoch.json"))

    proc, err, seconds = start_and_stop(args, checkpointed, how)
    sys.__stderr__.write(f"\n{how}: exited {proc.returncode} {seconds:.1f} s after the signal\n")  # for the record
    preempted = how != "sigint"
    assert "Traceback" not in err, err[-3000:]
    client, run = mlflow_run(tmp_path, "stopped")
    if how == "group" and proc.returncode == 1:
        # The group's SIGTERM also stops the raylet; when Ray's core worker in the driver notices first (an object
        # it owns was on the dead node, and the plasma store is gone), it ends the process with exit 1 before the
        # bookkeeping: what a SIGKILL at the end of the grace period leaves. Seen once in ~8 runs on 2 cores.
        assert run.data.tags["nvan.status"] == "running"
    else:
        assert proc.returncode == (143 if preempted else 130), err[-3000:]
        assert "--resume stopped" in err and ("preempted (SIGTERM)" if preempted else "interrupted") in err
        assert run.data.tags["nvan.status"] == ("preempted" if preempted else "interrupted")
        assert run.info.status == "KILLED"
    done = cli("harness.train", *tiny_sets, "--set", "train.epochs=8", "--set", "train.steps_per_epoch=3",
               "--set", "eval.every=2", "--resume", "stopped", "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    _, run = mlflow_run(tmp_path, "stopped")
    assert run.data.tags["nvan.status"] == "finished"
    assert steps(client, run.info.run_id) == list(range(8))
    assert steps(client, run.info.run_id, "map") == [1, 3, 5, 7]
    assert not (tmp_path / "ray" / "stopped" / LOCK_FILE).exists()


@pytest.mark.slow(seconds=170, cores=2)
def test_preempted_seeds_are_recorded_as_preempted_and_resume(cli, tiny_sets, tmp_path):
    """--all-seeds with two seeds, SIGTERM to the whole process group once both record epochs: each seed's record and
    MLflow run say preempted, the message names the seeds' real folders and a resume command, and that command
    trains every seed to its end, each epoch logged once (before: the records said running, and the message named
    ray/<name>, a folder that does not exist)."""
    out, epochs = tmp_path / "seeds", 8
    args = [sys.executable, "-m", "harness.train", *tiny_sets, "--set", f"train.epochs={epochs}", "--set",
            "train.steps_per_epoch=2", "--set", "eval.every=2", "--set", "seeds=[0,1]", "--all-seeds", "--out",
            str(out), "--name", "stopped"]
    before = {}

    def both_recorded() -> bool:
        """Both seeds have a record; what each says is kept (a seed that finished already stays finished)."""
        try:
            before.update({seed: json.loads((out / f"seed{seed}.json").read_text())["status"] for seed in (0, 1)})
        except (FileNotFoundError, ValueError):
            return False
        return True

    proc, err, _ = start_and_stop(args, both_recorded, "group")
    assert proc.returncode == 143 and "Traceback" not in err, err[-3000:]
    assert "running" in before.values(), before  # the signal stopped at least one seed mid-run
    expected = {seed: "finished" if status == "finished" else "preempted" for seed, status in before.items()}
    for seed, status in expected.items():
        assert json.loads((out / f"seed{seed}.json").read_text())["status"] == status
        _, run = mlflow_run(tmp_path, f"stopped-seed{seed}")
        assert (run.data.tags["nvan.status"], run.info.status) == (status, "FINISHED" if status == "finished" else
                                                                     "KILLED")
    client, _ = mlflow_run(tmp_path, "stopped-seed0")
    [seed_set] = client.search_runs([client.get_experiment_by_name("nvan-bench").experiment_id],
                                    filter_string="tags.`nvan.kind` = 'seeds'")
    assert (seed_set.data.tags["nvan.status"], seed_set.info.status) == ("preempted", "KILLED")
    stopped = [seed for seed, status in expected.items() if status == "preempted"]
    assert "preempted (SIGTERM)" in err and all(f"{tmp_path / 'ray' / f'stopped-seed{s}'}" in err for s in stopped)
    assert not re.search(rf"{re.escape(str(tmp_path / 'ray' / 'stopped'))}(?!-seed)", err), err
    resume = next(line.strip() for line in err.splitlines() if line.strip().startswith("python -m harness.train"))
    assert resume.endswith("--resume stopped") and "--all-seeds" in resume and "--name" not in resume
    done = cli("harness.train", *shlex.split(resume)[3:])
    assert done.returncode == 0, done.stderr[-3000:]
    for seed in (0, 1):
        assert json.loads((out / f"seed{seed}.json").read_text())["status"] == "finished"
        client, run = mlflow_run(tmp_path, f"stopped-seed{seed}")
        assert run.data.tags["nvan.status"] == "finished" and steps(client, run.info.run_id) == list(range(epochs))
        assert lock_files(str(tmp_path / "ray" / f"stopped-seed{seed}")) == []
    # One parent run groups the set in MLflow, across the resume: preempted, then finished.
    sets = client.search_runs([run.info.experiment_id], filter_string="tags.`nvan.kind` = 'seeds'")
    assert [(r.info.run_name, r.data.tags["nvan.status"], r.info.status) for r in sets] == [("stopped", "finished",
                                                                                             "FINISHED")]
    for seed in (0, 1):
        _, run = mlflow_run(tmp_path, f"stopped-seed{seed}")
        assert run.data.tags["mlflow.parentRunId"] == sets[0].info.run_id
        assert run.data.tags["nvan.seed_set"] == "stopped"


def test_a_checkpoint_cut_short_is_not_trusted_and_a_broken_snapshot_is_repaired(tmp_path):
    run = tmp_path / "run"
    for epoch, whole in ((0, True), (1, False)):
        folder = run / f"checkpoint_{epoch}"
        folder.mkdir(parents=True)
        (folder / "state.pt").write_bytes(b"x" * (100 if whole else 40))  # epoch 1's copy stopped at 40 bytes
        (folder / "epoch.json").write_text(json.dumps({"epoch": epoch, "loss": 1.0, "files": {"state.pt": 100}}))
    assert sorted(saved_epochs(str(run))) == [0]
    (run / SNAPSHOT_FILE).write_bytes(b"")  # what a full disk leaves of Ray's list of checkpoints
    repair_snapshot(str(run))
    assert not (run / SNAPSHOT_FILE).exists()
    (run / SNAPSHOT_FILE).write_text("{}")
    repair_snapshot(str(run))
    assert (run / SNAPSHOT_FILE).exists()  # a whole one is Ray's to read


def test_an_epoch_retrained_after_a_resume_is_logged_once(tmp_path):
    from harness.results.tracking import connect, start_run

    client, experiment = connect(f"sqlite:///{tmp_path / 'mlflow.db'}", "nvan-bench")
    run_id = start_run(client, experiment, "r", {}, {})
    # MLflow had epochs 0, 1 and (from its checkpoint) 3; the resume retrains 2 and 3 from epoch 1's checkpoint.
    logger = MlflowEpochLogger(f"sqlite:///{tmp_path / 'mlflow.db'}", run_id, {0, 1, 3})
    for epoch in (2, 3):
        logger.after_report(None, [{"epoch": epoch, "loss": float(epoch)}], None)
    assert steps(client, run_id) == [2]


@pytest.fixture
def prepared_copy(prepared_root, tmp_path, monkeypatch) -> Path:
    """A private copy of the tiny prepared dataset, with a digest cache of its own."""
    monkeypatch.setenv("NVAN_CACHE", str(tmp_path / "cache"))
    shutil.copytree(prepared_root, tmp_path / "prepared")
    return tmp_path / "prepared"


def test_the_data_is_what_the_manifest_says(cli, tiny_config, prepared_copy, tiny_sets):
    config = tiny_config(f"data.prepared_root={prepared_copy}")
    prepared = prepared_dataset(config.data)  # checked, and its digests cached
    folder, manifest = prepared.directory, prepared.manifest
    store = folder / "frames.uint8"
    size = store.stat().st_size
    store.write_bytes(os.urandom(size))  # noise over every frame, same size
    with pytest.raises(DatasetError, match=r"frames\.uint8 does not hold the bytes prepare wrote"):
        prepared_dataset(config.data)
    done = cli("harness.train", *tiny_sets, "--set", f"data.prepared_root={prepared_copy}")
    assert done.returncode == 2 and "does not hold the bytes" in done.stderr and "Traceback" not in done.stderr
    with open(store, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(DatasetError, match=rf"frames\.uint8 is truncated: {size // 2:,} bytes, the manifest says "
                                           rf"{size:,}"):
        prepared_dataset(config.data)
    edited = manifest | {"content_hash": "blake2b:" + "0" * 64}
    (folder / "manifest.json").write_text(json.dumps(edited))
    with pytest.raises(DatasetError, match="manifest.json was edited"):
        prepared_dataset(config.data)


def test_a_run_stopped_before_its_bookkeeping_finishes_with_what_it_trained_with(local_ray, tiny_config):
    config = tiny_config("train.epochs=2", "train.steps_per_epoch=2", "eval.every=1")
    first = fit(config, name="booked", progress=False)
    run_dir = str(Path(config.ray.storage_path) / "booked")
    assert first.best_checkpoint == storage.join(run_dir, saved_epochs(run_dir)[first.best_epoch]["folder"])
    assert first.precision == {"cudnn_allow_tf32": False, "cuda_matmul_allow_tf32": False,
                               "float32_matmul_precision": "highest"} and first.cpu_capability
    client = MlflowClient(config.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name("nvan-bench").experiment_id
    set_tags(client, find_run(client, experiment, "nvan.ray_run", "booked"), {"nvan.status": "running"})
    again = fit(config, resume="booked", progress=False)  # every epoch checkpointed: read back, not retrained
    assert (again.best_epoch, again.best_scores, again.best_checkpoint) == (first.best_epoch, first.best_scores,
                                                                            first.best_checkpoint)
    assert (again.precision, again.cpu_capability) == (first.precision, first.cpu_capability)


def test_a_tampered_checkpoint_is_named_where_the_user_keeps_it(local_ray, tiny_config, tmp_path):
    config = tiny_config("train.epochs=2", "train.steps_per_epoch=2")
    fit(config, name="kept", progress=False)
    client = MlflowClient(config.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name("nvan-bench").experiment_id
    set_tags(client, find_run(client, experiment, "nvan.ray_run", "kept"), {"nvan.status": "running"})
    last = storage.join(str(tmp_path / "ray" / "kept"), saved_epochs(str(tmp_path / "ray" / "kept"))[1]["folder"])
    Path(last, "state.pt").write_bytes(b"\x80\x04cos\nsystem\n(S'echo pwned'\ntR.")
    with pytest.raises(Exception, match=re.escape(f"{last}/state.pt")) as found:
        fit(config, resume="kept", progress=False)
    assert "/tmp/tmp" not in str(found.value)


RENDEZVOUS = """
import sys, threading, time, psutil
sys.path.insert(0, {tests!r})
from harness.params import load_config
from harness.train.driver import fit
from harness.cluster import ray_session
config = load_config({params!r}, {overrides!r})
seen, done = set(), threading.Event()
def watch():
    me = psutil.Process()
    while not done.is_set():
        family = {{me.pid}} | {{p.pid for p in me.children(recursive=True)}}
        for c in psutil.net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN and c.pid in family:
                seen.add((c.laddr.ip, c.laddr.port))
        time.sleep(0.1)
thread = threading.Thread(target=watch, daemon=True)
thread.start()
with ray_session(None, num_cpus=2):
    fit(config, progress=False)
done.set()
thread.join()
for ip, port in sorted(seen):
    print(ip, port)
"""


@pytest.mark.slow(seconds=80, cores=2)
def test_a_local_two_rank_job_listens_on_loopback_only(tiny_config, tmp_path):
    """Every socket the driver, Ray and both ranks listen on while training, the gloo rendezvous store included."""
    import yaml

    config = tiny_config("ray.num_workers=2", "train.epochs=2", "train.steps_per_epoch=3")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    code = RENDEZVOUS.format(tests=str(ROOT / "tests"), params=str(tmp_path / "params.yaml"), overrides=[])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=HANG_S,
                          env=os.environ | {"RAY_AUTH_MODE": "disabled"})
    assert done.returncode == 0, done.stderr[-3000:]
    addresses = {line.split()[0] for line in done.stdout.splitlines()}
    assert len(done.stdout.splitlines()) >= 4  # GCS, raylet, workers and the ranks' store
    assert addresses <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, done.stdout
