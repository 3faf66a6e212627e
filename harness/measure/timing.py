"""Latency of the inference model: a step timer, and the timing of a model in a fresh process or on a Ray node.

Units: latency is seconds per batch of the inference model that `harness.evaluate` runs
(`models.fuse.inference_model`: eval mode, batch norms folded into the convolutions,
`torch.inference_mode`), median over repeats with its spread, the threads used, the device (CPU
model or GPU name; CUDA events on a GPU), and how many cores other processes kept busy meanwhile.
Peak memory is the MiB one forward adds: CUDA max allocated above the weights and input, or
the peak resident set above the process once the model is built (CPU).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from harness.config import InputSize
from harness.measure.hardware import device_name
from harness.measure.memory import peak_rss_mib, reset_peak_rss
from harness.precision import set_tf32
from models.fuse import inference_model
from models.spec import ModelSpec
from models.video_reid import build_model

# A timing whose range exceeds a quarter of its median, or that shared the machine with more than
# a quarter of a core of other work, is marked noisy (tables show it; compare such figures with care).
NOISY_SPREAD = 0.25
NOISY_OTHER_CPUS = 0.25


@dataclass(frozen=True)
class Latency:
    """Seconds per batch over `repeats` timed forwards: median, range and quartiles, and the conditions."""

    median_s: float
    min_s: float
    max_s: float
    q1_s: float
    q3_s: float
    repeats: int
    threads: int
    device: str
    other_cpus: float | None  # None where /proc/stat is unavailable

    @property
    def spread(self) -> float:
        """(max - min) / median, a fraction."""
        return (self.max_s - self.min_s) / self.median_s

    @property
    def noisy(self) -> bool:
        """True when the spread or the competing load makes the median doubtful."""
        return self.spread > NOISY_SPREAD or (self.other_cpus or 0.0) > NOISY_OTHER_CPUS

    def as_dict(self) -> dict:
        """JSON form: the fields plus spread and noisy."""
        return asdict(self) | {"spread": self.spread, "noisy": self.noisy}

    @classmethod
    def of(cls, times: list[float], threads: int, device: str, other_cpus: float | None) -> Latency:
        """The summary of raw per-batch `times` (seconds)."""
        q1, median, q3 = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else times * 3
        return cls(median, min(times), max(times), q1, q3, len(times), threads, device, other_cpus)


def _busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _timed(step, cuda: bool) -> float:
    """Seconds of one call of `step`: CUDA events around it on a GPU, the wall clock on a CPU."""
    if cuda:  # kernels run asynchronously: time them on the device, between events
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def time_steps(step, repeats: int, cuda: bool) -> tuple[list[float], float | None]:
    """Seconds of each of `repeats` calls of `step`, and the cores other processes kept busy (None: unknown)."""
    busy, own, wall = _busy_seconds(), time.process_time(), time.perf_counter()
    times = [_timed(step, cuda) for _ in range(repeats)]
    busy_after = _busy_seconds()
    if busy is None or busy_after is None:
        return times, None
    # Whatever the machine was busy with beyond this process, in cores; clock ticks round to 0.01 s.
    return times, max(0.0, (busy_after - busy - (time.process_time() - own)) / (time.perf_counter() - wall))


def _measure(spec: ModelSpec, size: InputSize, batch: int, warmup: int, repeats: int, threads: int,
             device: str = "cpu", tf32: bool = False):
    """Runs in a fresh spawned process, so its peak RSS counts this model alone."""
    set_tf32(tf32)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    cuda = device.startswith("cuda")
    model = inference_model(build_model(spec).eval()).to(device)  # what evaluation runs: BN folded into convs
    clips = torch.randn(batch, size.frames, 3, size.height, size.width, device=device)
    with torch.inference_mode():
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        else:
            rss_before = reset_peak_rss()
        model(clips)
        if cuda:
            peak_mb = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        else:
            peak_mb = None if rss_before is None else peak_rss_mib(rss_before)
        for _ in range(max(warmup - 1, 0)):
            model(clips)
        times, other = time_steps(lambda: model(clips), repeats, cuda)
    return Latency.of(times, torch.get_num_threads(), device_name(device), other), peak_mb


def measure(spec: ModelSpec, size: InputSize, batch: int = 1, warmup: int = 2, repeats: int = 10,
            threads: int = 0, device: str = "cpu", tf32: bool = False) -> tuple[Latency, float | None]:
    """Latency per batch (s, with spread and conditions) and peak extra memory of one forward (MiB) on `device`.

    TF32 is allowed or not as training runs it (train.tf32).
    """
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_measure, (spec, size, batch, warmup, repeats, threads, device, tf32))


def _measure_on_node(spec: ModelSpec, size: InputSize, batch: int, warmup: int, repeats: int, threads: int,
                     device: str, tf32: bool) -> tuple[Latency, float | None, dict[str, str]]:
    import socket

    import ray

    latency, peak = measure(spec, size, batch, warmup, repeats, threads, device, tf32)
    node = {"node": f"{socket.gethostname()} ({ray.util.get_node_ip_address()})",
            "node_id": ray.get_runtime_context().get_node_id()}
    return latency, peak, node


def measure_where_trained(spec: ModelSpec, size: InputSize, *, cpus: int, gpus: float, env: dict[str, str],
                          batch: int = 1, warmup: int = 2, repeats: int = 10, tf32: bool = False
                          ) -> tuple[Latency, float | None, dict[str, str]]:
    """Latency (s per batch), peak memory (MiB) and node ("node": host and IP, "node_id": Ray's) of a Ray task.

    The task holds one training worker's resources (`cpus` threads, `gpus` GPUs, the workers'
    environment `env`), so the connected Ray cluster schedules it where such a worker would run:
    a GPU run is timed on a GPU of the cluster, not on the driver's CPU.
    """
    import ray

    # DEFAULT scheduling: inside a sweep trial the caller runs in Tune's placement group, which holds no
    # CPU; the task must take its resources from the cluster, as the trial's Train workers do.
    task = ray.remote(_measure_on_node).options(num_cpus=cpus, num_gpus=gpus, runtime_env={"env_vars": env},
                                                scheduling_strategy="DEFAULT")
    return ray.get(task.remote(spec, size, batch, warmup, repeats, cpus, "cuda" if gpus else "cpu", tf32))
