"""Run records: one JSON file per training run, complete enough to rebuild every report (DVC's truth).

A record holds what was trained (resolved config, ModelSpec, input, dataset and its manifest
hash), what it costs (params, GMACs, and the measured latency and memory with where they were
measured), how it scored (every protocol at the best checkpoint, CMC included), and where it
came from (git commit of the code, MLflow run id). Everything a rerun may change without the
results changing (ids, wall times, latency measured on a busy machine) sits under the keys in
`MEASURED`, so `reproducible_part` is what two runs of the same inputs must agree on.
Paths are stored as given in params, never resolved against this machine.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.cli import UserError
from harness.echo import echo, short
from harness.redact import redact
from harness import storage

SCHEMA = "nvan-bench run record 1"
EPOCH_FILE = "epoch.json"  # in each checkpoint folder, beside state.pt: the numbers reported for its epoch
QUERIES_FILE = "queries.parquet"  # likewise: the per-query outcomes of the best evaluation so far
# The params a training run's results depend on, i.e. what `dvc.yaml` declares for train@<preset>
# (mlflow only routes the logging): the record holds these, so it changes exactly when DVC reruns.
RUN_PARAMS = {"seed": None, "data": ("dataset", "frames", "height", "width"), "model": None, "train": None,
              "eval": None, "ray": ("num_workers", "cpus_per_worker", "use_gpu", "gpus_per_worker"),
              "cost": ("measure", "warmup", "repeats")}
MEASURED = ("run",)  # top-level keys that differ between identical runs
COST_MEASURED = ("latency", "peak_memory_mb")  # likewise inside "cost"
REQUIRED = ("label", "kind", "preset", "dataset", "input", "spec", "config", "cost", "scores", "best_epoch",
            "git_commit", "run")


def _plain(value: Any) -> Any:
    """JSON-ready: tuples as lists, non-finite floats as None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run_config(config: dict) -> dict:
    """The part of a params tree (config.model_dump(mode='json')) that decides a run: RUN_PARAMS and
    the trained preset's `presets.<name>` block."""
    kept = {key: config[key] if fields is None else {f: config[key][f] for f in fields}
            for key, fields in RUN_PARAMS.items()}
    preset = config["model"]["preset"]
    return kept | {"presets": {preset: config.get("presets", {}).get(preset, {})}}


def run_record(*, label: str, kind: str, config: dict, spec, manifest: dict, cost: dict, scores: dict,
               cmc: dict, best_epoch: int, epochs: int, git_commit: str, run: dict, status: str = "finished",
               ci95: dict | None = None) -> dict:
    """The record of one run. `config` is the params as given (config.model_dump(mode='json'); the record
    keeps its `run_config`), `spec` a ModelSpec, `scores` {protocol: metrics}, `cmc` {protocol: [rank-1 ..
    rank-n]}, `run` the measured part (ids, seconds, device), `ci95` {protocol: {score: [lo, hi]}} the 95 %
    query-bootstrap intervals. `status`: finished, or for sweep trials running, early-stopped, interrupted,
    failed or infeasible."""
    data = config["data"]
    return _plain({
        "schema": SCHEMA,
        "label": label,
        "kind": kind,
        "status": status,
        "preset": config["model"]["preset"],
        "dataset": {"name": data["dataset"], "format": manifest.get("format"),
                    "manifest_hash": manifest.get("content_hash"), "store_hash": manifest.get("store_hash"),
                    "synthetic": bool(manifest.get("synthetic", False))},
        "input": f"{data['frames']}x{data['height']}x{data['width']}",
        "spec": asdict(spec),
        "config": run_config(config),
        "cost": cost,
        "scores": {p: s | {"cmc": cmc.get(p)} | ({"ci95": ci95[p]} if ci95 and p in ci95 else {})
                   for p, s in scores.items()},
        "best_epoch": best_epoch,
        "epochs": epochs,
        "git_commit": git_commit,
        "run": run,
    })


def reproducible_part(record: dict) -> dict:
    """The record without what may differ between two runs of the same inputs (ids, timings, latency)."""
    part = {k: v for k, v in record.items() if k not in MEASURED}
    part["cost"] = {k: v for k, v in record.get("cost", {}).items() if k not in COST_MEASURED}
    return part


def write_record(path: Path | str, record: dict) -> None:
    """Write `record` as JSON to `path` (a file, or a URI under ray.storage_path) whole, never half."""
    storage.write_text(path, json.dumps(record, indent=2) + "\n")


def read_record(path: Path | str) -> dict:
    """The record at `path` (a file or a URI); UserError naming it and what is wrong."""
    file = Path(str(path).partition("?")[0])
    seeds = file.stem.startswith("seed")  # <out>/seed<k>.json of `harness.train --all-seeds --out <out>`
    fix = (f"rerun the training that writes it (`dvc repro train@{file.parent.name if seeds else file.stem}` or "
           f"`python -m harness.train {f'--all-seeds --out {file.parent}' if seeds else f'--out {path}'}`)")
    try:
        record = json.loads(storage.read_text(path))
    except FileNotFoundError:
        raise UserError(f"run record {redact(path)} does not exist; {fix}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"run record {redact(path)} is not readable JSON ({type(e).__name__}: {short(e)}); {fix}") from None
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        found = record.get("schema") if isinstance(record, dict) else type(record).__name__
        raise UserError(f"{redact(path)} is not a run record of this version (schema {echo(found)}, expected "
                        f"{SCHEMA!r}); {fix}")
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise UserError(f"run record {redact(path)} lacks {missing}; {fix}")
    try:
        RecordShape.model_validate(record)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])} = {echo(err.get('input'))}: {err['msg']}"
                             for err in e.errors(include_url=False)[:5])
        raise UserError(f"run record {redact(path)} has fields of the wrong type ({short(problems, 600)}); {fix}") from None
    return record


class _Section(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Dataset(_Section):
    name: str
    format: str | None = None
    manifest_hash: str | None = None
    synthetic: bool


class _Eval(_Section):
    protocols: list[str] = Field(min_length=1)


class _Config(_Section):
    seed: int | None = None
    eval: _Eval


class _Latency(_Section):
    median_s: float
    min_s: float
    max_s: float
    device: str | None = None


class _Cost(_Section):
    params_m: float | None = None
    gmacs: float | None = None
    gmacs_paper: float | None = None
    gmacs_per_tracklet: float | None = None
    clips_per_tracklet: float | None = None
    latency: _Latency | None = None
    peak_memory_mb: float | None = None


class _Scores(_Section):
    rank1: float | None = None
    rank5: float | None = None
    rank10: float | None = None
    rank20: float | None = None
    map: float | None = None
    minp: float | None = None
    cmc: list[float] | None = None
    ci95: dict[str, list[float]] | None = None


class RecordShape(_Section):
    """The types of the fields reports and sweeps read from a record (the rest is kept as written)."""

    label: str
    kind: str
    status: str = "finished"
    preset: str
    dataset: _Dataset
    input: str
    spec: dict[str, Any]
    config: _Config
    cost: _Cost
    scores: dict[str, _Scores]
    best_epoch: int
    epochs: int = 0
    git_commit: str | None
    run: dict[str, Any]
