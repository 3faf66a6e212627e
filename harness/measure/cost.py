"""Cost of a model at an input size: parameters, MACs per part, latency and peak memory; the cost command.

Units: MACs per clip (harness.measure.macs: multiply-accumulates; FLOPs = 2 x MACs), latency in
seconds per batch of the BN-folded inference model (harness.measure.timing), peak memory in MiB;
MACs are those of the unfused model.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from harness.cli import config_parser, load_from_args
from harness.config import InputSize
from harness.io import check_writable, write_json_atomic
from harness.measure.macs import PARTS, count_macs, count_params
from harness.measure.timing import NOISY_OTHER_CPUS, NOISY_SPREAD, Latency, measure
from models.presets import preset_spec
from models.spec import ModelSpec, SpecError
from models.video_reid import build_model

log = logging.getLogger("harness.cost")

UNITS = {"macs": "multiply-accumulates per clip", "latency": "seconds per batch (median, min, max, quartiles)",
         "peak_memory_mb": "MiB", "other_cpus": "cores busy with other processes while timing"}


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
        """MACs per clip in billions."""
        return self.macs / 1e9

    @property
    def input_label(self) -> str:
        """The clip size as 'TxHxW' (frames x pixels x pixels)."""
        return f"{self.frames}x{self.height}x{self.width}"

    def as_dict(self) -> dict:
        """JSON form, with gmacs, the input label and the latency summary."""
        latency = self.latency.as_dict() if self.latency else None
        return asdict(self) | {"latency": latency, "gmacs": self.gmacs, "input": self.input_label}


def tracklet_costs(gmacs_per_clip: float, frames: int, clips_per_tracklet: list[int] | tuple[int, ...],
                   sampler: str) -> dict:
    """GMACs per frame and per test tracklet (mean over the test set), and the clips per tracklet.

    Clips of `frames` frames run `clips_per_tracklet` times per tracklet by the test `sampler` (dense: ceil(F / T)).
    """
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
    """python -m harness.cost: print the presets' cost table (M params, GMACs, ms, MiB); with --out, write its JSON."""
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

