"""Run records: one JSON file per training run, complete enough to rebuild every report (DVC's truth).

A record holds what was trained (resolved config, ModelSpec, input, dataset and its manifest
hash), what it costs (params, GMACs, and the measured latency and memory with where they were
measured), how it scored (every protocol at the evaluation `selection` names, CMC included: eval.select
last, the trained model, or test, the best on the test set), how it converged (`history`: each
epoch's loss, learning rate and, where evaluated, rank-1 and mAP), and where it came from (git commit
of the code, MLflow run id, the machine of rank 0's worker). Everything a rerun may change without the
results changing (ids, wall times, latency measured on a busy machine) sits under the keys in
`MEASURED`, so `reproducible_part` is what two runs of the same inputs must agree on.
Paths are stored as given in params, never resolved against this machine.

`RunRecord` is the schema: `read_record` returns one, checked, and readers use its fields (`record.primary_scores`,
`record.run.gpu`); the keys it does not type stay reachable as attributes, and `written()` is the record as written.
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from harness.errors import UserError
from harness.config import PRESETS
from harness.echo import echo, short
from harness.redact import redact
from harness import storage

SCHEMA = "nvan-bench run record 1"
# The params a training run's results depend on, i.e. what `dvc.yaml` declares for train@<preset>
# (mlflow only routes the logging): the record holds these, so it changes exactly when DVC reruns.
RUN_PARAMS = {"seed": None, "data": ("dataset", "frames", "height", "width"), "model": None, "train": None,
              "eval": None, "ray": ("num_workers", "cpus_per_worker", "use_gpu", "gpus_per_worker"),
              "cost": ("measure", "warmup", "repeats")}
# How a run ends (or that it is still running); a sweep trial may also be early-stopped or infeasible.
STATUSES = ("running", "finished", "preempted", "interrupted", "failed", "early-stopped", "infeasible")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # run.finished_at, in UTC
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # of a Ray run: a folder under ray.storage_path
MEASURED = ("run",)  # top-level keys that differ between identical runs
COST_MEASURED = ("latency", "peak_memory_mb")  # likewise inside "cost"
REQUIRED = ("label", "kind", "preset", "dataset", "input", "spec", "config", "cost", "scores", "best_epoch",
            "git_commit", "run")
SELECTIONS = ("last", "test")  # eval.select: the scores are the last epoch's, or the best on the test set's
HISTORY_SCORES = ("rank1", "map")  # a history entry's scores: the primary protocol's, at evaluated epochs


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
               ci95: dict | None = None, history: list[dict] | None = None) -> dict:
    """The record of one run. `config` is the params as given (config.model_dump(mode='json'); the record
    keeps its `run_config`, and names its eval.select as `selection`), `spec` a ModelSpec, `scores` {protocol:
    metrics} of the selected evaluation, `cmc` {protocol: [rank-1 .. rank-n]}, `run` the measured part (ids,
    seconds, device), `ci95` {protocol: {score: [lo, hi]}} the 95 % intervals, `history` the epochs so far
    (`history_of`). `status`: one of STATUSES."""
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
        "selection": config["eval"]["select"],
        "scores": {p: s | {"cmc": cmc.get(p)} | ({"ci95": ci95[p]} if ci95 and p in ci95 else {})
                   for p, s in scores.items()},
        "best_epoch": best_epoch,
        "epochs": epochs,
        "history": history or [],
        "git_commit": git_commit,
        "run": run,
    })


def history_of(epochs: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """A record's `history` from the numbers each epoch reported ({0-based epoch: numbers}): one entry per epoch in
    order, its 1-based `epoch`, mean training `loss`, the `lr` it trained with and, at evaluated epochs, the
    primary protocol's `rank1` and `map` (fractions)."""
    return _plain([{"epoch": epoch + 1, "loss": numbers.get("loss"), "lr": numbers.get("lr")}
                   | {k: numbers[k] for k in HISTORY_SCORES if k in numbers}
                   for epoch, numbers in sorted(epochs.items())])


def checkpoint_epochs(numbers: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Every epoch's numbers up to a checkpoint ({0-based epoch: numbers}) from its EPOCH_FILE: its own epoch's and
    the earlier epochs' (its `history`)."""
    return {int(e): m for e, m in (numbers.get("history") or {}).items()} | {int(numbers["epoch"]): numbers}


def reproducible_part(record: dict) -> dict:
    """The record without what may differ between two runs of the same inputs (ids, timings, latency)."""
    part = {k: v for k, v in record.items() if k not in MEASURED}
    part["cost"] = {k: v for k, v in record.get("cost", {}).items() if k not in COST_MEASURED}
    return part


def write_record(path: Path | str, record: dict) -> None:
    """Write `record` as JSON to `path` (a file, or a URI under ray.storage_path) whole, never half."""
    storage.write_text(path, json.dumps(record, indent=2) + "\n")


def read_record(path: Path | str) -> RunRecord:
    """The record at `path` (a file or a URI); UserError naming it, the field and what is wrong, and how to fix it."""
    file = Path(str(path).partition("?")[0]) if storage.is_uri(path) else Path(path).resolve()
    try:
        record = json.loads(storage.read_text(path))
    except FileNotFoundError:
        raise UserError(f"run record {redact(path)} does not exist; check the path ({_writers(file)})") from None
    except OSError as e:
        raise UserError(f"run record {redact(path)} cannot be read ({type(e).__name__}: {short(redact(str(e)))}); "
                        f"check that it is a file you may read, on storage that is reachable") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"run record {redact(path)} is not readable JSON ({type(e).__name__}: {short(e)}); "
                        f"{_not_written_so(file)}") from None
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        found = record.get("schema") if isinstance(record, dict) else type(record).__name__
        raise UserError(f"{redact(path)} is not a run record of this version (schema {echo(found)}, expected "
                        f"{SCHEMA!r}); {_not_written_so(file)}")
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise UserError(f"run record {redact(path)} lacks {missing}; {_not_written_so(file)}")
    try:
        return RunRecord.model_validate(record)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])} = {echo(err.get('input'))}, expected "
                             f"{_expected(err)}" for err in e.errors(include_url=False)[:5])
        raise UserError(f"run record {redact(path)} has fields of the wrong type or value ({short(problems, 600)}); "
                        f"{_not_written_so(file)}") from None


def _expected(error: dict) -> str:
    """What a field should hold, from pydantic's error about it."""
    kind, message = error["type"], error["msg"]
    if kind == "missing":
        return "a value (the field is required)"
    if kind in ("model_type", "dict_type"):
        return "a JSON object"
    if kind == "string_pattern_mismatch":
        return f"a string matching {error['ctx']['pattern']}"
    return message.removeprefix("Value error, ").removeprefix("Input should be ")


_TRAIN_WRITES = ("`python -m harness.train --out FILE.json` writes a record, and with --all-seeds `--out DIR` writes "
                 "DIR/seed<k>.json")
_DVC_WRITES = (f"`dvc repro train@<preset>` writes reports/runs/<preset>/seed<k>.json, for the presets "
               f"{', '.join(PRESETS)}")


def _dvc_preset(file: Path) -> str | None:
    """The preset whose DVC stage train@<preset> writes `file` (reports/runs/<preset>/seed<k>.json), else None."""
    parts = file.parts
    if len(parts) >= 4 and parts[-4:-2] == ("reports", "runs") and parts[-2] in PRESETS \
            and re.fullmatch(r"seed\d+\.json", parts[-1]):
        return parts[-2]
    return None


def _writers(file: Path) -> str:
    """What writes a record where `file` is missing: its DVC stage, or the commands (no stage that does not exist)."""
    preset = _dvc_preset(file)
    return f"`dvc repro train@{preset}` writes it" if preset else f"{_TRAIN_WRITES}; {_DVC_WRITES}"


def _not_written_so(file: Path) -> str:
    """How to get a good record when `file` is not one harness.train wrote (never by writing over `file`)."""
    preset = _dvc_preset(file)
    if preset:
        return (f"it changed since the DVC stage train@{preset} wrote it (`dvc status train@{preset}` shows whether it "
                f"differs from dvc.lock), or another version wrote it: correct it, or give another record "
                f"({_TRAIN_WRITES})")
    return (f"it was edited, cut short, or written by another tool or version: correct it, or give a record "
            f"harness.train wrote ({_TRAIN_WRITES}; {_DVC_WRITES})")


class _Section(BaseModel):
    # Strict: a reader takes each value as written ("0.5" is no score, 1 no flag), so the types must hold as written.
    model_config = ConfigDict(extra="allow", strict=True)


def _utc_time(value: str) -> str:
    """`value` if it is a time as records write it (TIME_FORMAT), else ValueError saying what is expected."""
    try:
        time.strptime(value, TIME_FORMAT)
    except ValueError:
        raise ValueError(f"a UTC time written as {time.strftime(TIME_FORMAT, time.gmtime(0))}") from None
    return value


UtcTime = Annotated[str, AfterValidator(_utc_time)]
MlflowRunId = Annotated[str, Field(pattern=r"^[0-9A-Za-z_-]{1,64}$")]
RayRun = Annotated[str, Field(pattern=f"^{RUN_NAME.pattern}$")]


class _Dataset(_Section):
    name: str
    format: str | None = None
    manifest_hash: str | None = None
    store_hash: str | None = None
    synthetic: bool


class _Eval(_Section):
    protocols: list[str] = Field(min_length=1)


class _Train(_Section):
    epochs: int = Field(ge=1)


class _Ray(_Section):
    gpus_per_worker: float = Field(ge=0)  # GPUs each worker holds when it trains on GPUs


class _Config(_Section):
    seed: int | None = None
    train: _Train
    eval: _Eval
    ray: _Ray | None = None


class _Latency(_Section):
    median_s: float
    min_s: float
    max_s: float
    noisy: bool | None = None
    device: str | None = None


class _Cost(_Section):
    params_m: float | None = None
    gmacs: float | None = None
    gmacs_paper: float | None = None
    gmacs_per_tracklet: float | None = None
    clips_per_tracklet: float | None = None
    eval_sampler: str | None = None
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


class _Run(_Section):
    """The measured part: where the run lives (MLflow, Ray) and how it ran."""

    mlflow_run_id: MlflowRunId | None = None
    ray_run: RayRun | None = None
    checkpoint: str | None = None
    best_checkpoint: str | None = None
    seconds: float | None = None
    startup_s: float | None = None
    clips_per_s: float | None = None
    finished_at: UtcTime | None = None
    device: str | None = None
    workers: int | None = Field(default=None, ge=1)
    threads_per_worker: int | None = Field(default=None, ge=1)
    gpu: str | None = None  # rank 0's CUDA device, None on a CPU
    worker_cpu: str | None = None
    driver_cpu: str | None = None


Fraction = Annotated[float, Field(ge=0, le=1)]


class _Epoch(_Section):
    """One epoch of a run's history; rank1 and map only where it was evaluated."""

    epoch: int = Field(ge=1)
    loss: float | None  # None: not finite (the run diverged)
    lr: float = Field(ge=0)
    rank1: Fraction | None = None
    map: Fraction | None = None


def _consecutive(history: list[_Epoch]) -> list[_Epoch]:
    """`history` if its epochs are 1, 2, ..., n in order, else ValueError saying so."""
    numbers = [entry.epoch for entry in history]
    if numbers != list(range(1, len(numbers) + 1)):
        raise ValueError(f"one entry per epoch, numbered 1, 2, ... in order (found epochs {short(numbers, 200)})")
    return history


class RunRecord(_Section):
    """A run record: the types of the fields reports, sweeps and --all-seeds read (the rest is kept as written)."""

    label: str
    kind: str
    status: Literal[STATUSES] = "finished"
    preset: str
    dataset: _Dataset
    input: str = Field(pattern=r"^\d+x\d+x\d+$")
    spec: dict[str, Any]
    config: _Config
    cost: _Cost
    # selection and history: absent only from records written before they existed (which chose on the test set);
    # never null (pydantic leaves a default unvalidated).
    selection: Literal[SELECTIONS] = None
    scores: dict[str, _Scores]
    best_epoch: int = Field(ge=-1)
    epochs: int = Field(default=0, ge=0)
    history: Annotated[list[_Epoch], AfterValidator(_consecutive)] = None
    git_commit: str | None
    run: _Run
    # The dict it was validated from: what reruns compare and status updates rewrite, byte for byte (a dump of the
    # fields would differ: 1 becomes 1.0 in a float field, absent optional fields become null).
    _written: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_written(cls, data: Any, handler) -> RunRecord:
        record = handler(data)
        if isinstance(data, dict):
            record._written = copy.deepcopy(data)
        return record

    @property
    def primary(self) -> str:
        """The record's primary protocol: the first it was evaluated on."""
        return self.config.eval.protocols[0]

    @property
    def primary_scores(self) -> _Scores:
        """The scores of the primary protocol; empty (every score None) where the record has none."""
        return self.scores.get(self.primary, _Scores())

    @property
    def hardware(self) -> str:
        """Where the run trained: its device and rank 0's GPU or CPU model, e.g. 'cpu: AMD EPYC'."""
        device, model = self.run.device or "unknown device", self.run.gpu or self.run.worker_cpu
        return f"{device}: {model}" if model else device

    def written(self) -> dict[str, Any]:
        """The record as written: the JSON object it was read from, every key included, as a copy to edit freely."""
        return copy.deepcopy(self._written)
