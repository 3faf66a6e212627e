"""A tiny prepared synthetic dataset and config for the training, evaluation and sweep tests."""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from datasets.errors import run_cli
from datasets.prepare import prepare
from datasets.synthetic import write_mars
from harness.cli import run
from harness.config import Config
from harness.params import load_config

ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster per test session


@pytest.fixture(scope="session")
def prepared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/prepared-like folder holding `mars`: 8 training identities, 64 x 32 frames."""
    raw = tmp_path_factory.mktemp("raw") / "mars"
    write_mars(raw, identities=16, cameras=3, tracklets_per_id=4, min_frames=4, max_frames=10,
               height=64, width=32, distractors=1, junk=1, seed=3)
    root = tmp_path_factory.mktemp("prepared")
    prepare("mars", raw, root / "mars", height=64, width=32)
    return root


def tiny_overrides(prepared_root: Path, work: Path) -> list[str]:
    """--set overrides for a seconds-long training job on `prepared_root`, writing under `work`."""
    return [
        f"data.prepared_root={prepared_root}", "data.dataset=mars", "data.frames=4", "data.height=64",
        "data.width=32", "model.preset=nvan", "model.width=4", "model.stripes=null", "train.epochs=3",
        "train.batch_size=8", "train.k=2", "train.lr=1e-3", "eval.every=1", "eval.protocols=[mars-official]",
        "ray.num_workers=1", "ray.cpus_per_worker=1", "ray.max_failures=0", f"ray.storage_path={work / 'ray'}",
        "cost.measure=false",
        f"mlflow.tracking_uri=sqlite:///{work / 'mlflow.db'}",
    ]


@pytest.fixture
def tiny_sets(prepared_root: Path, tmp_path: Path) -> list[str]:
    """The tiny overrides as command-line arguments: --set a=b ..."""
    return [arg for item in tiny_overrides(prepared_root, tmp_path) for arg in ("--set", item)]


@pytest.fixture
def tiny_config(prepared_root: Path, tmp_path: Path):
    """A factory: the tiny config with extra `--set` overrides applied."""

    def make(*extra: str) -> Config:
        return load_config(ROOT / "params.yaml", tiny_overrides(prepared_root, tmp_path) + list(extra))

    return make


@dataclass
class Done:
    returncode: int
    stderr: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run `python -m MODULE ARGS` in this process (through the same runner): its exit code and stderr."""
    monkeypatch.chdir(ROOT)

    def call(module: str, *args: str) -> Done:
        # `python -m harness.train` runs the package's __main__ module; `python -m harness.cost` the module itself.
        package = importlib.util.find_spec(module).submodule_search_locations is not None
        main = importlib.import_module(f"{module}.__main__" if package else module).main
        runner = run_cli if module.startswith("datasets.") else run
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            runner(main, list(args))
        return Done(exit_.value.code, capsys.readouterr().err)

    return call


@pytest.fixture(scope="session")
def s3_server():
    """A local S3 (moto's server, on loopback): (endpoint host:port, a URI query and credentials for pyarrow)."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    boto3.client("s3", endpoint_url=f"http://{host}:{port}", aws_access_key_id="testing",
                 aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket="nvan-runs")
    try:
        yield f"{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_storage(s3_server: str, tmp_path: Path) -> str:
    """A fresh ray.storage_path in the local S3, credentials and endpoint in the URI (so every Ray worker has them)."""
    return (f"s3://testing:testing@nvan-runs/{tmp_path.name}?endpoint_override={s3_server}&scheme=http"
            f"&region=us-east-1")
