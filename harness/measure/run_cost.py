"""The cost of one training run, as its record and MLflow run hold it: params, GMACs, latency and memory."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from harness.config import PAPER_INPUT, Config, InputSize
from harness.cluster import numerics_env, worker_resources


def run_cost(config: Config, spec, directory: Path) -> dict[str, Any]:
    """Params; GMACs per clip (at the run's input and the paper's), per frame and per test tracklet; and,
    if cost.measure, latency and memory timed with one training worker's resources on the cluster."""
    from datasets.loaders import EvalClips
    from harness.measure.cost import cost_of, tracklet_costs
    from harness.measure.macs import macs_on_meta
    from harness.measure.timing import measure_where_trained

    report = cost_of(config.model.preset, spec, config.data.input, measure_time=False)
    clips = EvalClips(directory, config.data.frames, config.eval.sampler).clips_per_tracklet()
    cost = {
        "params": report.params, "params_m": report.params / 1e6, "gmacs": report.gmacs, "input": report.input_label,
        "gmacs_paper": macs_on_meta(spec, PAPER_INPUT) / 1e9 if _fits(spec, PAPER_INPUT) else None,
        "paper_input": PAPER_INPUT.label(),
        **tracklet_costs(report.gmacs, config.data.frames, clips.tolist(), config.eval.sampler),
        "latency": None, "peak_memory_mb": None,
    }
    if config.cost.measure:
        resources = worker_resources(config.ray)
        latency, peak, node = measure_where_trained(
            spec, config.data.input, cpus=config.ray.cpus_per_worker, gpus=resources.get("GPU", 0),
            env=numerics_env(config.train.cpu_isa), warmup=config.cost.warmup, repeats=config.cost.repeats,
            tf32=config.train.tf32)
        cost |= {"latency": latency.as_dict() | node | {"batch": 1, "model": "BN-folded, as evaluation runs it"},
                 "peak_memory_mb": peak}
    return cost


def cost_metrics(cost: dict[str, Any]) -> dict[str, float]:
    """The run's cost as MLflow metrics (NaN where not measured)."""
    latency = cost.get("latency") or {}
    nan = math.nan
    return {
        "cost.params_m": cost["params_m"], "cost.gmacs": cost["gmacs"],
        "cost.gmacs_paper": cost["gmacs_paper"] if cost.get("gmacs_paper") is not None else nan,
        "cost.gmacs_per_frame": cost["gmacs_per_frame"], "cost.gmacs_per_tracklet": cost["gmacs_per_tracklet"],
        "cost.clips_per_tracklet": cost["clips_per_tracklet"],
        "cost.latency_ms": 1e3 * latency["median_s"] if latency else nan,
        "cost.latency_min_ms": 1e3 * latency["min_s"] if latency else nan,
        "cost.latency_max_ms": 1e3 * latency["max_s"] if latency else nan,
        "cost.latency_noisy": float(latency["noisy"]) if latency else nan,
    }


def _fits(spec, size: InputSize) -> bool:
    from models.spec import SpecError

    try:
        spec.validate_input(size.frames, size.height, size.width)
    except SpecError:
        return False
    return True
