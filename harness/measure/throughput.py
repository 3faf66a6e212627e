"""Throughput of one model under one setting: a step closure, its timing in a fresh process, and the row's figures.

Units: a step is one batch of `batch` clips of T frames; step times are seconds per step (Latency:
median over `repeats` timed steps after `warmup` untimed ones, with min, max and quartiles), shown as
milliseconds; throughput is clips per second (batch / median step seconds) and frames per second
(clips/s x T). Peak memory is MiB: on CUDA `torch.cuda.max_memory_allocated` over one step (weights,
optimizer state, activations); on CPU the peak resident set of one step above the bare process before
the model was built (the same parts, plus allocator and, with torch.compile, compiler memory).
compile_s is the seconds torch.compile added to the first step. Each try runs in a fresh spawned process.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace

import torch

from harness.config import InputSize
from harness.evaluate.features import autocast
from harness.measure.hardware import device_name
from harness.measure.memory import peak_rss_mib, reset_peak_rss, rss_kb
from harness.measure.timing import Latency, time_steps
from harness.precision import set_tf32
from models.fuse import inference_model
from models.losses import reid_loss
from models.spec import ModelSpec
from models.video_reid import build_model

# The bench command's logger, whose name these messages have always carried, whichever command measures.
log = logging.getLogger("harness.bench")


@dataclass(frozen=True)
class Setting:
    """One measurement's knobs: mode, clips per step, autocast dtype, layout and compilation."""

    mode: str
    batch: int
    amp: str
    channels_last: bool
    compile: bool
    tf32: bool = False  # TF32 in cuDNN convolutions and CUDA matmuls (harness.precision); no effect on a CPU


def _is_oom(e: BaseException, capped: bool) -> bool:
    # CPU torch raises a plain RuntimeError ("DefaultCPUAllocator: can't allocate memory"). oneDNN only says
    # it "could not create a primitive" when its allocations fail, so that counts only under --memory-cap-mb.
    signs = ("can't allocate memory", "bad_alloc", "out of memory") + (("could not create a primitive",) if capped else ())
    return isinstance(e, (torch.OutOfMemoryError, MemoryError)) or isinstance(e, RuntimeError) and any(
        s in str(e) for s in signs)


def least_batch(spec: ModelSpec, size: InputSize, mode: str) -> int:
    """The fewest clips a step can take: training batch norm needs 2 rows (clips, or frames with a frame head)."""
    frames = size.frames // 2 ** len(spec.temporal_pool_after)
    return 2 if mode == "train" and (spec.head == "clip" or frames < 2) else 1


def bench_model(spec: ModelSpec, s: Setting, device: torch.device) -> torch.nn.Module:
    """The model `s` measures: fresh weights (seed 0), BN-folded for inference, in `s`'s memory layout, on `device`."""
    torch.manual_seed(0)
    model = build_model(spec)
    # What evaluation runs: BN folded into the convolutions.
    model = inference_model(model.eval()) if s.mode == "infer" else model.train()
    # build_model and inference_model both leave the backbone channels-last, so "off" must put it
    # back; only the 2D backbone changes (the non-local blocks' 5D weights keep their layout).
    model.backbone.to(memory_format=torch.channels_last if s.channels_last else torch.contiguous_format)
    return model.to(device)


def step_fn(model, compiled, s: Setting, clips: torch.Tensor, device: torch.device):
    """A closure running one inference or training step on `clips`."""
    amp = autocast(device, s.amp)
    if s.mode == "infer":
        def step():
            with torch.inference_mode(), amp:
                compiled(clips)
        return step
    batch = len(clips)
    k = min(4, max(1, batch // 2))  # P x K identities; two or more identities from batch 2 on
    labels = (torch.arange(batch) // k % model.spec.num_classes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type) if s.amp == "fp16" else None

    def step():
        with amp:
            features, logits = compiled(clips)
            loss, _ = reid_loss(features, logits, labels)
        if scaler:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def _cap_memory(spec: ModelSpec, size: InputSize, s: Setting, model, device: torch.device,
                memory_cap_mb: int) -> tuple[int, int]:
    """Cap virtual memory at this process's size (after one smallest step) plus `memory_cap_mb` MiB; the old limit."""
    # One smallest step first: thread pools, kernels and lazy imports set up under the cap fail in ways
    # that are not allocation errors (an OpenMP abort, a half-imported module).
    warm = torch.randn(least_batch(spec, size, s.mode), size.frames, 3, size.height, size.width, device=device)
    step_fn(model, model, s, warm, device)()
    model.zero_grad(set_to_none=True)
    del warm
    reset_peak_rss()  # hand freed heap back so VmSize is what is really mapped
    # RLIMIT_AS caps virtual memory (every mapping, not only resident pages), so this is a real
    # allocation failure. The soft limit may be raised back to the hard one afterwards.
    limit = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, ((rss_kb("VmSize") + memory_cap_mb * 1024) * 1024, limit[1]))
    return limit


def _measure(spec: ModelSpec, size: InputSize, s: Setting, warmup: int, repeats: int, threads: int,
             memory_cap_mb: int | None) -> dict:
    """Runs in a fresh spawned process: one try at `s`; status, Latency (s per step), memory (MiB), compile s."""
    set_tf32(s.tf32)
    if threads:
        torch.set_num_threads(threads)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    result = {"device": device_name(device.type), "threads": torch.get_num_threads(),
              "memory_kind": "cuda max allocated" if cuda else "cpu peak rss"}
    bare_kib = None if cuda else reset_peak_rss()
    model = bench_model(spec, s, device)
    compiled = torch.compile(model) if s.compile else model
    if memory_cap_mb is not None:
        limit = _cap_memory(spec, size, s, model, device, memory_cap_mb)
    try:
        clips = torch.randn(s.batch, size.frames, 3, size.height, size.width, device=device)
        step = step_fn(model, compiled, s, clips, device)
        first = time.perf_counter()
        step()  # the first step compiles (torch.compile) and allocates optimizer state
        if cuda:
            torch.cuda.synchronize()
        first_s = time.perf_counter() - first
        for _ in range(max(warmup - 1, 0)):
            step()
        # Memory over one more untimed step: trimming the heap makes the next step fault its pages back in.
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            reset_peak_rss()
        step()
        if cuda:
            torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() / 2**20 if cuda
                else float("nan") if bare_kib is None else peak_rss_mib(bare_kib))
        times, other = time_steps(step, repeats, cuda)
    except Exception as e:
        # oneDNN may stay broken after a failed allocation, so a smaller batch gets a fresh process.
        if not _is_oom(e, memory_cap_mb is not None):
            raise
        return result | {"status": "oom", "note": f"out of memory at batch {s.batch}"}
    finally:
        if memory_cap_mb is not None:
            resource.setrlimit(resource.RLIMIT_AS, limit)
    latency = Latency.of(times, torch.get_num_threads(), result["device"], other)
    compile_s = max(first_s - latency.median_s, 0.0) if s.compile else 0.0
    return result | {"status": "ok", "note": "", "latency": latency, "peak_memory_mb": peak, "compile_s": compile_s}


def bench_one(spec: ModelSpec, size: InputSize, s: Setting, warmup: int, repeats: int, threads: int = 0,
              memory_cap_mb: int | None = None) -> dict:
    """A row's figures for `s` (ms per step, clips/s, frames/s, MiB, s), halving the batch on out-of-memory.

    Each try runs in a fresh spawned process, so peak memory counts this model alone.
    """
    batch, least = s.batch, least_batch(spec, size, s.mode)
    while True:
        with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
            result = pool.submit(_measure, spec, size, replace(s, batch=batch), warmup, repeats, threads,
                                 memory_cap_mb).result()
        if result["status"] == "ok" or batch // 2 < least:
            break
        log.info("out of memory at batch %d; trying %d", batch, batch // 2)
        batch //= 2
    return row_figures(s, batch, size.frames, **result)


def row_figures(s: Setting, batch: int, frames: int, status: str, note: str, device: str, threads: int,
                memory_kind: str = "", latency: Latency | None = None, peak_memory_mb: float = float("nan"),
                compile_s: float = float("nan")) -> dict:
    """A row's measured part: throughput (clips/s, frames/s), step ms, memory (MiB); NaN where not measured."""
    nan = float("nan")
    lat = latency or Latency(nan, nan, nan, nan, nan, 0, threads, device, None)
    clips_per_s = batch / lat.median_s
    return {"batch_requested": s.batch, "batch": batch, "oom_backoff": batch < s.batch, "status": status,
            "note": note, "device": device, "threads": threads, "compile_s": compile_s,
            "clips_per_s": clips_per_s, "frames_per_s": clips_per_s * frames, "step_ms_median": lat.median_s * 1e3,
            "step_ms_min": lat.min_s * 1e3, "step_ms_max": lat.max_s * 1e3, "step_ms_q1": lat.q1_s * 1e3,
            "step_ms_q3": lat.q3_s * 1e3, "spread": lat.spread, "noisy": latency is not None and lat.noisy,
            "repeats": lat.repeats, "other_cpus": nan if lat.other_cpus is None else lat.other_cpus,
            "peak_memory_mb": peak_memory_mb, "memory_kind": memory_kind}
