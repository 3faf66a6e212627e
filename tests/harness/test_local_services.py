"""What the CLIs start or reach on this machine: a loopback-only Ray, a sqlite store two drivers can create at once,
and a fast answer from an unreachable tracking server."""

from __future__ import annotations

import multiprocessing as mp
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.results.tracking import connect
from store_workers import create_store

ROOT = Path(__file__).resolve().parents[2]

LISTENERS = """
import psutil, ray
from harness.cluster import ray_session
with ray_session(None, num_cpus=1):
    assert ray.get(ray.remote(lambda: 1).remote()) == 1
    family = {p.pid for p in psutil.Process().children(recursive=True)} | {psutil.Process().pid}
    for c in psutil.net_connections(kind="inet"):
        if c.status == psutil.CONN_LISTEN and c.pid in family:
            print(c.laddr.ip, c.laddr.port)
"""


@pytest.mark.slow
def test_a_local_ray_listens_on_loopback_only():
    done = subprocess.run([sys.executable, "-c", LISTENERS], capture_output=True, text=True, cwd=ROOT, timeout=1800,
                          env={"RAY_USAGE_STATS_ENABLED": "0", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    assert done.returncode == 0, done.stderr[-2000:]
    addresses = {line.split()[0] for line in done.stdout.splitlines()}
    assert len(done.stdout.splitlines()) >= 3  # GCS, raylet, workers
    assert addresses <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, addresses


def test_drivers_creating_one_sqlite_store_at_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    context = mp.get_context("spawn")
    barrier = context.Barrier(3)
    procs = [context.Process(target=create_store, args=(uri, barrier)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(1800)  # a net against a hang
    assert [p.exitcode for p in procs] == [0, 0, 0]
    client, experiment_id = connect(uri, "nvan-bench")
    assert [e.name for e in client.search_experiments()].count("nvan-bench") == 1


def test_an_unreachable_tracking_server_is_named_at_once():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    from harness.report.runs import open_experiment

    with pytest.raises(UserError, match=f"tracking server {uri} is unreachable"):
        open_experiment(uri, "nvan-bench")
    done = subprocess.run([sys.executable, "-m", "harness.report", "--from-mlflow", "--set",
                           f"mlflow.tracking_uri={uri}"], capture_output=True, text=True, cwd=ROOT, timeout=1800)
    assert done.returncode == 2 and "unreachable" in done.stderr and "Traceback" not in done.stderr
