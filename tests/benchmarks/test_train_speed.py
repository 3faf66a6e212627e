"""Training throughput of the Ray job against a plain single-process loop (same model, data, batch).

Run: pytest tests/benchmarks/test_train_speed.py --benchmark-only -n 0 -s
Steady state = the last epoch's clips/s of each; start-up (command to first step) is reported apart.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.loaders import TrainClips, set_epoch, train_loader
from datasets.prepare import prepare
from datasets.synthetic import write_mars
from harness.params import load_config
from harness.train.driver import fit
from harness.cluster import ray_session
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


SEEDS_CHILD = """
import sys, time
import torch
sys.path.insert(0, {root!r})
from datasets.loaders import TrainClips, set_epoch, train_loader
from harness.params import load_config
from harness.train.worker import build_optimizer, train_epoch
from models.video_reid import build_model

config = load_config({params!r}, {overrides!r})
torch.set_num_threads({threads})
torch.manual_seed({seed})
data = TrainClips(config.data.prepared_root / config.data.dataset, config.data.frames, seed={seed})
loader = train_loader(data, config.train.p, config.train.k, mode=config.train.epoch)
model = build_model(config.spec(data.num_classes))
optimizer = build_optimizer(model, config.train)
set_epoch(loader, 0)
train_epoch(model, loader, optimizer, config.train, torch.device("cpu"))  # warm-up, untimed
start = time.perf_counter()
for epoch in range(1, {epochs} + 1):
    set_epoch(loader, epoch)
    train_epoch(model, loader, optimizer, config.train, torch.device("cpu"))
print(time.perf_counter() - start)
"""


@pytest.fixture(scope="module")
def default_data(tmp_path_factory) -> Path:
    """The embedded default's training split (50 identities) at its size, prepared at 64 x 32."""
    work = tmp_path_factory.mktemp("seeds")
    write_mars(work / "raw", identities=100, cameras=6, tracklets_per_id=6, min_frames=8, max_frames=24,
               height=128, width=64, distractors=0, junk=0, seed=0)
    prepare("mars", work / "raw", work / "prepared" / "mars", height=64, width=32)
    return work / "prepared"


def seeds_wall_time(prepared: Path, threads: int, side_by_side: bool, spinners: int, epochs: int = 3) -> float:
    """Seconds of training (after each process's start-up and one untimed epoch) to train 2 seeds of STE-NVAN, the
    embedded default's model, for `epochs` epochs each: one after the other (the sum of their times) or side by side
    (the longer of the two), each with `threads` torch threads, while `spinners` busy processes share the CPU."""
    import subprocess
    import sys

    def child(seed: int) -> subprocess.Popen:
        code = SEEDS_CHILD.format(root=str(ROOT), params=str(ROOT / "params.yaml"), threads=threads, seed=seed,
                                  epochs=epochs, overrides=[f"data.prepared_root={prepared}", "model.preset=ste_nvan"])
        return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)

    load = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(spinners)]
    try:
        if side_by_side:
            procs = [child(0), child(1)]
            return max(float(proc.communicate()[0]) for proc in procs)
        return sum(float(child(seed).communicate()[0]) for seed in (0, 1))
    finally:
        for proc in load:
            proc.kill()


def test_seeds_side_by_side_on_one_thread_quiet_and_loaded(benchmark, default_data):
    """The embedded default's design: one thread per worker, two seeds at once, against two threads one seed at a time.

    On a shared 2-core machine every OpenMP barrier of a 2-thread step waits for a descheduled thread; single-thread
    processes have no barrier to wait on. Loaded = 4 busy processes beside the training (a load of about 6).
    """
    times: dict[str, list[float]] = {}

    def measure():
        for _ in range(3):  # interleaved, so a slow spell of the machine hits every setting alike
            for load in (0, 4):
                for name, threads, side in (("two_threads_one_at_a_time", 2, False), ("one_thread_side_by_side", 1, True)):
                    times.setdefault(f"{name}_load{load}", []).append(seeds_wall_time(default_data, threads, side, load))

    benchmark.pedantic(measure, rounds=1, iterations=1)
    figures = {k: float(np.median(v)) for k, v in times.items()}
    for load in (0, 4):
        figures[f"ratio_load{load}"] = (figures[f"one_thread_side_by_side_load{load}"]
                                        / figures[f"two_threads_one_at_a_time_load{load}"])
    benchmark.extra_info.update(figures)
    print("\n" + "\n".join(f"{k}: {v:.2f}" for k, v in figures.items()))
