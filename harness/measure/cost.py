"""Cost of a model at an input size: parameters, MACs per part, latency and peak memory.

Units: MACs are multiply-accumulates of convolutions, linear layers, matrix products and
attention (what fvcore calls "flops"; FLOPs = 2 x MACs). Elementwise work (batch norm,
pooling, softmax, additions) is not counted, as in the ResNet and NVAN papers. Latency is
seconds per batch of the inference model that `harness.evaluate` runs (`models.fuse.inference_model`:
eval mode, batch norms folded into the convolutions, `torch.inference_mode`), median over repeats
with its spread, the threads used, the device (CPU model or GPU name; CUDA events on a GPU), and
how many cores other processes kept busy meanwhile; MACs are those of the unfused model.
"""

from __future__ import annotations

import ctypes
import logging
import math
import multiprocessing as mp
import os
import platform
import statistics
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from harness.cli import config_parser, load_from_args
from harness.config import InputSize
from harness.io import check_writable, write_json_atomic
from harness.precision import set_tf32
from models.fuse import inference_model
from models.presets import preset_spec
from models.spec import ModelSpec, SpecError
from models.video_reid import build_model

log = logging.getLogger("harness.cost")

UNITS = {"macs": "multiply-accumulates per clip", "latency": "seconds per batch (median, min, max, quartiles)",
         "peak_memory_mb": "MiB", "other_cpus": "cores busy with other processes while timing"}
PARTS = ("stem", "stage1", "stage2", "stage3", "stage4", "non_local", "head")
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


@dataclass(frozen=True)
class CostReport:
    """Cost of one spec at one input; MACs are per clip, latency and memory per batch."""

    name: str
    model_width: int
    frames: int
    height: int
    width: int
    batch: int
    params: int
    params_by_part: dict[str, int]
    params_classifier: int
    macs: int
    macs_by_part: dict[str, int]
    uncounted_ops: list[str]
    latency: Latency | None = None
    peak_memory_mb: float | None = None

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def input_label(self) -> str:
        return f"{self.frames}x{self.height}x{self.width}"

    def as_dict(self) -> dict:
        """JSON form, with gmacs, the input label and the latency summary."""
        latency = self.latency.as_dict() if self.latency else None
        return asdict(self) | {"latency": latency, "gmacs": self.gmacs, "input": self.input_label}


def part_of(module_name: str) -> str:
    """The cost-table part (stem, stage1..4, non_local, head) a module of VideoReIDNet belongs to."""
    if "non_local" in module_name:
        return "non_local"
    for stage in (1, 2, 3, 4):
        prefix = f"backbone.layer{stage}"
        if module_name == prefix or module_name.startswith(prefix + "."):
            return f"stage{stage}"
    if module_name.startswith("backbone."):
        return "stem"
    return "head"


def _shape(value) -> list[int]:
    return value.type().sizes()


def _matmul_macs(inputs, outputs) -> int:
    # torch.matmul broadcasts batch dims of either operand; fvcore's stock handle assumes the
    # left operand holds them, so count from the output shape instead: out elements x inner dim.
    a = _shape(inputs[0])
    return math.prod(_shape(outputs[0])) * a[-1]


def _sdpa_macs(inputs, outputs) -> int:
    # softmax(q k^T) v: q (..., N, d), k (..., M, d), v (..., M, dv) -> N*M*d + N*M*dv per batch.
    q, k, v = (_shape(x) for x in inputs[:3])
    batch = math.prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def count_macs(model: nn.Module, clips: torch.Tensor) -> tuple[int, dict[str, int], list[str]]:
    """MACs of one eval forward on `clips` (whole batch), per part, and op names left uncounted."""
    from fvcore.nn import FlopCountAnalysis  # slow import; only cost counting needs it
    from fvcore.nn.jit_handles import addmm_flop_jit, conv_flop_jit, linear_flop_jit

    analysis = FlopCountAnalysis(model, clips)
    # Only MAC-bearing ops (see module docstring); fvcore's defaults also count batch norm and
    # pooling, and its matmul/bmm handles assume the left operand holds the batch dimensions.
    analysis.clear_op_handles()
    analysis.set_op_handle(
        "aten::_convolution", conv_flop_jit,
        "aten::addmm", addmm_flop_jit,
        "aten::linear", linear_flop_jit,
        "aten::mm", _matmul_macs,
        "aten::matmul", _matmul_macs,
        "aten::bmm", _matmul_macs,
        "aten::scaled_dot_product_attention", _sdpa_macs,
    )
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        totals = analysis.by_module()
    by_part = dict.fromkeys(PARTS, 0)
    for name, module in model.named_modules():
        own = totals.get(name, 0) - sum(
            totals.get(f"{name}.{child}" if name else child, 0) for child, _ in module.named_children()
        )
        by_part[part_of(name)] += own
    return int(totals[""]), by_part, sorted(analysis.unsupported_ops())


def macs_on_meta(spec: ModelSpec, size: InputSize, batch: int = 1) -> int:
    """MACs per clip of `spec` at `size`, counted by torch's FlopCounterMode on the meta device (ms)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build_model(spec).eval()
        clips = torch.empty(batch, size.frames, 3, size.height, size.width)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(clips)
    return counter.get_total_flops() // 2 // batch  # FlopCounterMode counts 2 per MAC


def count_params(model: nn.Module) -> tuple[int, dict[str, int], int]:
    """Parameter count without the classifier, per part, and the classifier's count separately."""
    by_part = dict.fromkeys(PARTS, 0)
    classifier = 0
    for name, p in model.named_parameters():
        if name.startswith("classifier."):
            classifier += p.numel()
        else:
            by_part[part_of(name.rpartition(".")[0])] += p.numel()
    return sum(by_part.values()), by_part, classifier


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> int | None:
    """Hand freed heap pages back to the OS and restart the peak-RSS counter; resident KiB, or None."""
    # Without this the forward reuses pages that building and fusing the model freed (RSS does not
    # grow), and VmHWM may still hold that earlier peak: ResNet-50 at 8x256x128 read 16 MiB, not 93.
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc only
    if trim is not None:
        trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux >= 4.0: reset VmHWM to the current RSS
    except OSError as e:
        log.warning("cannot reset the peak RSS (%s); peak memory is not measured", e)
        return None
    return _rss_kb("VmRSS")


def peak_rss_mib(since_kib: int) -> float:
    """Peak resident memory (MiB) above `since_kib`, the value reset_peak_rss returned."""
    return (_rss_kb("VmHWM") - since_kib) / 1024


def cpu_name() -> str:
    """The processor's model name (Linux), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def device_name(device: str) -> str:
    """'cuda: <GPU name>' or 'cpu: <processor model>', the label every latency carries."""
    if device.startswith("cuda"):
        return f"cuda: {torch.cuda.get_device_name(torch.device(device))}"
    return f"cpu: {cpu_name()}"


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
    """Seconds of each of `repeats` calls of `step`, and the cores other processes kept busy meanwhile
    (None where /proc/stat is unavailable)."""
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
    """Latency per batch (s, with spread and conditions) and peak extra memory of one forward (MiB) on `device`,
    with TF32 allowed or not as training runs it (train.tf32)."""
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
    """Latency (s per batch) and peak memory (MiB) timed by a Ray task holding one training worker's
    resources (`cpus` threads, `gpus` GPUs, the workers' environment `env`), and the node it ran on
    ("node": host and IP, "node_id": Ray's).

    The connected Ray cluster schedules it where such a worker would run, so a GPU run is timed on
    a GPU of the cluster, not on the driver's CPU.
    """
    import ray

    # DEFAULT scheduling: inside a sweep trial the caller runs in Tune's placement group, which holds no
    # CPU; the task must take its resources from the cluster, as the trial's Train workers do.
    task = ray.remote(_measure_on_node).options(num_cpus=cpus, num_gpus=gpus, runtime_env={"env_vars": env},
                                                scheduling_strategy="DEFAULT")
    return ray.get(task.remote(spec, size, batch, warmup, repeats, cpus, "cuda" if gpus else "cpu", tf32))


def tracklet_costs(gmacs_per_clip: float, frames: int, clips_per_tracklet: list[int] | tuple[int, ...],
                   sampler: str) -> dict:
    """GMACs per frame and per test tracklet (mean over the test set) for clips of `frames` frames
    run `clips_per_tracklet` times per tracklet by the test `sampler` (dense: ceil(F / T) clips)."""
    clips = sum(clips_per_tracklet) / len(clips_per_tracklet)
    return {"gmacs_per_frame": gmacs_per_clip / frames, "eval_sampler": sampler,
            "test_tracklets": len(clips_per_tracklet), "clips_per_tracklet": clips,
            "gmacs_per_tracklet": gmacs_per_clip * clips}


def cost_of(name: str, spec: ModelSpec, size: InputSize, batch: int = 1, measure_time: bool = True,
            warmup: int = 2, repeats: int = 10, threads: int = 0, tf32: bool = False) -> CostReport:
    """The full CostReport of `spec` at `size` (MACs per clip; latency per batch of `batch`)."""
    spec.validate_input(size.frames, size.height, size.width)
    torch.manual_seed(0)
    model = build_model(spec).eval()
    params, params_by_part, params_classifier = count_params(model)
    clips = torch.randn(1, size.frames, 3, size.height, size.width)
    macs, macs_by_part, uncounted = count_macs(model, clips)
    latency = peak = None
    if measure_time:
        latency, peak = measure(spec, size, batch, warmup, repeats, threads, tf32=tf32)
    return CostReport(
        name=name, model_width=spec.width, frames=size.frames, height=size.height, width=size.width, batch=batch,
        params=params, params_by_part=params_by_part, params_classifier=params_classifier,
        macs=macs, macs_by_part=macs_by_part, uncounted_ops=uncounted, latency=latency, peak_memory_mb=peak,
    )


def format_table(reports: list[CostReport]) -> str:
    """A plain-text table: params (M), GMACs per clip by part, latency (ms) and memory (MB)."""
    head = ["model", "width", "input TxHxW", "params M", "GMACs"] + [p for p in PARTS] + [
        "ms/batch", "min-max ms", "threads", "peak MB"]
    rows = []
    for r in reports:
        lat = r.latency
        rows.append([
            r.name, str(r.model_width), r.input_label, f"{r.params / 1e6:.2f}", f"{r.gmacs:.2f}",
            *(f"{r.macs_by_part[p] / 1e9:.2f}" for p in PARTS),
            "-" if lat is None else f"{lat.median_s * 1e3:.1f}" + (" noisy" if lat.noisy else ""),
            "-" if lat is None else f"{lat.min_s * 1e3:.1f}-{lat.max_s * 1e3:.1f}",
            "-" if lat is None else str(lat.threads),
            "-" if r.peak_memory_mb is None else f"{r.peak_memory_mb:.0f}",
        ])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    lines = ["  ".join(str(x).rjust(w) for x, w in zip(row, widths)) for row in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    devices = sorted({r.latency.device for r in reports if r.latency})
    note = ("GMACs per clip (1 MAC = 1 multiply-accumulate; FLOPs = 2 x MACs); parts exclude the classifier. "
            "Latency: the BN-folded inference model that harness.evaluate runs"
            + (f", on {', '.join(devices)}" if devices else "") + ". "
            f"noisy: range > {NOISY_SPREAD:.0%} of the median, or > {NOISY_OTHER_CPUS} cores of other work while timing.")
    return "\n".join(lines + [note])


def main(argv: list[str] | None = None) -> int:
    parser = config_parser(
        "harness.cost", "Parameters, MACs, latency and memory of the model presets.",
        ["python -m harness.cost --no-measure",
         "python -m harness.cost --preset nvan --out reports/cost/nvan.json",
         "python -m harness.cost --preset baseline --preset nvan --input 4x128x64 --set cost.width=16 --no-measure"])
    parser.add_argument("--preset", action="append", help="preset to cost, repeatable (default: cost.presets)")
    parser.add_argument("--input", action="append",
                        help="clip size TxHxW of the paper-width models, e.g. 8x256x128, repeatable "
                             "(default: cost.inputs)")
    parser.add_argument("--no-measure", action="store_true", help="count params and MACs only; skip latency and memory")
    parser.add_argument("--out", type=Path, help="write the reports as JSON here")
    args = parser.parse_args(argv)
    config = load_from_args(args)
    if args.out:
        check_writable(args.out)
    cost = config.cost
    inputs = [InputSize.parse(s) for s in args.input] if args.input else cost.inputs
    presets = args.preset or cost.presets
    # The paper's models at full width, then (cost.benchmark) the models the benchmark trains.
    jobs = [(name, preset_spec(name, cost.num_classes, width=cost.width, last_stride=config.model.last_stride), size)
            for size in inputs for name in presets]
    if cost.benchmark:
        jobs += [(name, config.spec(cost.num_classes, name), config.data.input) for name in presets]
    reports = []
    for name, spec, size in jobs:
        log.info("costing %s at %s (width %d)", name, size.label(), spec.width)
        try:
            spec.validate_input(size.frames, size.height, size.width)
        except SpecError as e:
            raise SpecError(f"cannot cost {name} at {size.label()} (T x H x W), width {spec.width}: {e}; "
                            f"change cost.inputs / --input, or the preset's params") from None
        reports.append(cost_of(
            name, spec, size, batch=cost.batch, measure_time=cost.measure and not args.no_measure,
            warmup=cost.warmup, repeats=cost.repeats, threads=cost.threads, tf32=config.train.tf32,
        ))
    print(format_table(reports))
    if args.out:
        payload = {"units": UNITS, "reports": [r.as_dict() for r in reports]}
        write_json_atomic(args.out, payload)
        log.info("wrote %s", args.out)
    return 0

