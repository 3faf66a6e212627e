"""Training throughput of the Ray job against a plain single-process loop (same model, data, batch).

Run: pytest tests/benchmarks/test_train_speed.py --benchmark-only -n 0 -s
Steady state = the last epoch's clips/s of each; start-up (command to first step) is reported apart.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from datasets.loaders import TrainClips, set_epoch, train_loader
from datasets.prepare import prepare
from datasets.synthetic import write_mars
from harness.config import load_config
from harness.train.driver import fit
from harness.train.session import ray_session
from harness.train.worker import build_optimizer, train_epoch
from models.video_reid import build_model

ROOT = Path(__file__).resolve().parents[2]
STEPS, EPOCHS = 30, 3


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    work = tmp_path_factory.mktemp("speed")
    write_mars(work / "raw", identities=60, cameras=6, tracklets_per_id=16, min_frames=8, max_frames=16,
               height=128, width=64, distractors=0, junk=0, seed=0)
    prepare("mars", work / "raw", work / "prepared" / "mars", height=128, width=64)
    return load_config(ROOT / "params.yaml", [
        f"data.prepared_root={work / 'prepared'}", "data.height=128", "data.width=64", "model.preset=nvan",
        "model.width=8", "model.stripes=null", "train.epoch=tracklets",  # 30 identities x 16 tracklets: 30 steps
        f"train.epochs={EPOCHS}", f"train.steps_per_epoch={STEPS}", f"eval.every={EPOCHS + 1}",
        "eval.protocols=[mars-official]", "ray.num_workers=1", "ray.cpus_per_worker=2", "ray.max_failures=0",
        f"ray.storage_path={work / 'ray'}", f"mlflow.tracking_uri=sqlite:///{work / 'mlflow.db'}"])


def plain_loop(config) -> float:
    """Clips/s of the last of EPOCHS epochs of the same loop without Ray."""
    torch.set_num_threads(config.ray.cpus_per_worker)
    torch.manual_seed(config.seed)
    data = TrainClips(config.data.prepared_root / config.data.dataset, config.data.frames, seed=config.seed)
    loader = train_loader(data, config.train.p, config.train.k, mode=config.train.epoch)
    model = build_model(config.spec(data.num_classes))
    optimizer = build_optimizer(model, config.train)
    for epoch in range(EPOCHS):
        set_epoch(loader, epoch)
        stats = train_epoch(model, loader, optimizer, config.train, torch.device("cpu"))
    return stats["clips_per_s"]


def test_ray_overhead_under_ten_percent(benchmark, config):
    results = {}

    def both():
        results["plain"] = plain_loop(config)
        with ray_session(None, num_cpus=2):
            start = time.perf_counter()
            result = fit(config, progress=False)
        results["ray"], results["startup_s"] = result.clips_per_s, result.startup_s
        results["job_s"] = time.perf_counter() - start

    benchmark.pedantic(both, rounds=1, iterations=1)
    overhead = 1 - results["ray"] / results["plain"]
    benchmark.extra_info.update(results | {"overhead": overhead})
    print(f"\nplain {results['plain']:.2f} clips/s, Ray {results['ray']:.2f} clips/s, overhead {100 * overhead:.1f} %, "
          f"start-up {results['startup_s']:.1f} s, job {results['job_s']:.1f} s")
    assert overhead < 0.10
