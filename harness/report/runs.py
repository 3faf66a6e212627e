"""What a report shows, as one polars table: run records, sweep tables or an MLflow experiment, and cost files."""

from __future__ import annotations

import calendar
import functools
import hashlib
import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from mlflow import MlflowClient
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException

from harness.errors import UserError
from harness.config import PAPER_INPUT
from harness.evaluate.queries import queries_path
from harness.measure.macs import macs_on_meta
from harness.report.testsets import by_test_set
from harness.checkpoint import QUERIES_FILE
from harness.results.records import TIME_FORMAT, RunRecord, read_record
from harness.results.tracking import check_reachable
from models.presets import PRESETS, preset_spec


@dataclass(frozen=True)
class Published:
    """A result reported by the paper's authors on real MARS (percent)."""

    name: str
    preset: str
    rank1: float
    map: float


# Liu et al., BMVC 2019, Table 5 (NVAN, STE-NVAN); the baseline is the authors' released checkpoint.
PUBLISHED = (
    Published("baseline", "baseline", 87.4, 79.4),
    Published("NVAN", "nvan", 90.0, 82.8),
    Published("STE-NVAN", "ste_nvan", 88.9, 81.2),
)
PAPER_WIDTH = 64  # ResNet-50
MARS_CLASSES = 625  # classifier size only; it adds no MACs to the embedding

METRICS = ("rank1", "rank5", "rank10", "rank20", "map", "minp")
PANELS = (("rank1", "rank-1 (%)"), ("map", "mAP (%)"))
# Params shown on hover: the model's spec and the knobs that most change accuracy.
HOVER_PARAMS = ("spec.width", "spec.last_stride", "spec.non_local", "spec.stripes", "spec.nl_window",
                "spec.temporal_pool_after", "train.epochs", "train.batch_size", "train.k",
                "train.optimizer", "train.lr", "train.amp", "eval.select_by")
# report.cost_axis -> the column plotted (as "cost") and the Pareto front's cost.
AXES = {"gmacs": "gmacs", "gmacs_tracklet": "gmacs_tracklet", "latency": "latency_ms"}
AXIS_NAMES = {"gmacs": "GMACs per clip", "gmacs_tracklet": "GMACs per test tracklet",
              "latency": "latency (ms per clip)"}
MAX_LABELS = 30  # per panel; beyond it only Pareto and preset runs are labelled (the HTML hovers all)

# With a 95 % interval, seed spread and P(on the Pareto front) in reports: the panels' scores and mINP.
INTERVAL_METRICS = ("rank1", "map", "minp")
_TEXT = ("run_id", "parent_run_id", "label", "kind", "status", "dataset", "preset", "protocol",
         "device", "input", "git_commit", "eval_sampler", "latency_device",
         "queries",  # the run's per-query outcomes (a file or URI), null where none were kept
         "manifest_hash",  # of the prepared data it was scored on, null where unknown: part of its test set
         "config_key",  # runs that differ only in their seed share it: one point of a report
         "cpu", "gpu",  # the hardware a run trained on (its workers' CPU where known, else its driver's)
         "selection",  # how its scored epoch was chosen: "last", or "test" (best on the test set, optimistic)
         "history")  # its per-epoch numbers as a JSON list (loss, lr; rank1, map at evaluated epochs), or null
_FLOAT = ("params_m", "gmacs", "gmacs_paper", "gmacs_tracklet", "clips_per_tracklet", "latency_ms", "latency_min_ms",
          "latency_max_ms", "train_s", *METRICS,
          # Already aggregated over seeds by a sweep (its trials' rows); computed from the queries otherwise.
          *(f"{m}_{s}" for m in INTERVAL_METRICS for s in ("lo", "hi", "std")), *(f"p_front_{a}" for a, _ in PANELS))
# A sweep's trials come with their sure-front flags; a run alone has none (null) until its point is assessed.
_SURE = tuple(f"sure_{a}" for a, _ in PANELS)
SCHEMA = {**dict.fromkeys(_TEXT, pl.String), "synthetic": pl.Boolean, "latency_noisy": pl.Boolean,
          "start_time": pl.Int64, "seed": pl.Int64, "seeds": pl.Int64, **dict.fromkeys(_FLOAT, pl.Float64),
          **dict.fromkeys(_SURE, pl.Boolean), **dict.fromkeys(HOVER_PARAMS, pl.String)}


def config_key(config: dict) -> str:
    """A short hash of a run's deciding params without its seed: the runs of one configuration share it."""
    kept = {k: v for k, v in config.items() if k != "seed"}
    return hashlib.blake2b(json.dumps(kept, sort_keys=True).encode(), digest_size=8).hexdigest()


def open_experiment(uri: str, experiment: str) -> tuple[MlflowClient, str]:
    """A client of an existing store and the id of `experiment`; UserError if either is missing."""
    check_reachable(uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise UserError(no_runs_message(uri, experiment, None, "the store does not exist"))
    client = MlflowClient(uri)
    try:
        found = client.get_experiment_by_name(experiment)
    except MlflowException as e:
        raise UserError(f"cannot read MLflow store {uri}: {e.message}; check mlflow.tracking_uri") from None
    if found is None:
        raise UserError(no_runs_message(uri, experiment, None, "the experiment does not exist"))
    return client, found.experiment_id


def no_runs_message(uri: str, experiment: str, dataset: str | None, why: str) -> str:
    """The one-paragraph error for a store without runs to report."""
    which = f" for dataset {dataset!r}" if dataset else ""
    return (f"nothing to report: MLflow experiment {experiment!r} in store {uri} has no training or "
            f"trial runs{which} ({why}). Produce runs with `dvc repro` (trains every preset), "
            f"`python -m harness.train` or `python -m harness.sweep`, or point the report at the store "
            f"and experiment that hold them (--experiment, --dataset, --set mlflow.tracking_uri=URI "
            f"or MLFLOW_TRACKING_URI).")


def _row(r) -> dict:
    tags, params, metrics = r.data.tags, r.data.params, r.data.metrics
    return {
        "run_id": r.info.run_id, "parent_run_id": tags.get("mlflow.parentRunId"),
        "label": tags.get("nvan.label") or r.info.run_name, "kind": tags.get("nvan.kind"),
        "status": tags.get("nvan.status") or r.info.status.lower(), "dataset": tags.get("dataset"),
        "synthetic": tags.get("dataset.synthetic") == "true", "preset": tags.get("preset"),
        "protocol": tags.get("protocol"), "device": tags.get("device"), "input": params.get("input"),
        "manifest_hash": params.get("dataset.manifest_hash") if params.get("dataset.manifest_hash") != "unknown" else None,
        "git_commit": params.get("git_commit"), "start_time": r.info.start_time,
        "cpu": tags.get("hardware.cpu"), "gpu": tags.get("hardware.gpu"), "history": None,
        # Runs that logged no eval.select predate the choice: they kept the epoch that scored best on the test set.
        "selection": params.get("eval.select", "test"),
        "params_m": metrics.get("cost.params_m"), "gmacs": metrics.get("cost.gmacs"),
        "gmacs_paper": metrics.get("cost.gmacs_paper"), "latency_ms": metrics.get("cost.latency_ms"),
        "latency_min_ms": metrics.get("cost.latency_min_ms"), "latency_max_ms": metrics.get("cost.latency_max_ms"),
        # NaN where the latency was not measured: no verdict on its noise either.
        "latency_noisy": None if not math.isfinite(metrics.get("cost.latency_noisy", math.nan))
        else bool(metrics["cost.latency_noisy"]),
        "latency_device": tags.get("cost.device"), "eval_sampler": params.get("eval.sampler"),
        "gmacs_tracklet": metrics.get("cost.gmacs_per_tracklet"), "clips_per_tracklet": metrics.get("cost.clips_per_tracklet"),
        "train_s": None if r.info.end_time is None else (r.info.end_time - r.info.start_time) / 1e3,
        "seed": int(params["seed"]) if params.get("seed", "").isdigit() else None, "seeds": 1,
        # Without its seed a run cannot be told from a rerun: it is a point of its own.
        "config_key": config_key({k: v for k, v in params.items() if k not in ("git_commit", "mlflow.tracking_uri")})
        if params.get("seed", "").isdigit() else r.info.run_id,
        **{m: metrics.get(f"best.{m}") for m in METRICS},
        **{p: params.get(p) for p in HOVER_PARAMS},
    }


def _param_text(value) -> str | None:
    """A config value as MLflow logs it (lists as '[0, 2, 3, 0]'), so both sources read alike."""
    return None if value is None else str(list(value) if isinstance(value, tuple) else value)


def _record_row(record: RunRecord, queries: str | None) -> dict:
    """One SCHEMA row from a run record (harness/results/records.py) whose per-query outcomes are at `queries`."""
    # The config as written: its key hashes it, and the hover params are looked up in it by name.
    config, cost, run, latency = record.written()["config"], record.cost, record.run, record.cost.latency
    start_time = None
    if run.finished_at:
        start_time = int(1000 * calendar.timegm(time.strptime(run.finished_at, TIME_FORMAT)))

    def ms(key: str):
        return None if latency is None else 1e3 * getattr(latency, key)

    hover = {p: _param_text(record.spec.get(p.removeprefix("spec."))) if p.startswith("spec.")
             else _param_text(config.get(p.split(".")[0], {}).get(p.split(".")[1])) for p in HOVER_PARAMS}
    return {
        "run_id": run.mlflow_run_id, "parent_run_id": None, "label": record.label, "kind": record.kind,
        "status": record.status, "dataset": record.dataset.name, "synthetic": record.dataset.synthetic,
        "preset": record.preset, "protocol": record.primary, "device": run.device, "input": record.input,
        "manifest_hash": record.dataset.manifest_hash, "git_commit": record.git_commit, "start_time": start_time,
        "params_m": cost.params_m, "gmacs": cost.gmacs, "gmacs_paper": cost.gmacs_paper,
        "latency_ms": ms("median_s"), "latency_min_ms": ms("min_s"), "latency_max_ms": ms("max_s"),
        "latency_noisy": None if latency is None else latency.noisy,
        "latency_device": None if latency is None else latency.device, "train_s": run.seconds,
        "eval_sampler": cost.eval_sampler, "gmacs_tracklet": cost.gmacs_per_tracklet,
        "clips_per_tracklet": cost.clips_per_tracklet, "seed": record.config.seed, "seeds": 1,
        "queries": queries, "config_key": config_key(config),
        "cpu": run.worker_cpu or run.driver_cpu, "gpu": run.gpu,
        # Records without a selection predate the choice: they kept the epoch that scored best on the test set.
        "selection": record.selection or getattr(record.config.eval, "select", "test"),
        # As written: a dump of the parsed entries would turn integral floats into 1.0.
        "history": json.dumps(record.written()["history"]) if record.history else None,
        **{m: getattr(record.primary_scores, m) for m in METRICS}, **hover,
    }


def record_files(paths: list[Path]) -> list[Path]:
    """The run records named: files as given, and every record (*.json) in a folder given, in name order."""
    files = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("*.json"))
            if not found:
                raise UserError(f"{path} holds no run record (*.json); give a record file or a folder written by "
                                f"`python -m harness.train --all-seeds --out {path}`")
            files += found
        else:
            files.append(path)
    return files


def load_records(files: list[Path]) -> pl.DataFrame:
    """One row per run record file, in the order given, with its per-query outcomes' file."""
    rows = []
    for path in files:
        queries = queries_path(path)
        rows.append(_record_row(read_record(path), queries if Path(queries).is_file() else None))
    return pl.DataFrame(rows, schema=SCHEMA)


SWEEP_COLUMNS = ("label", "status", "map", "rank1", "gmacs_input", "dataset", "synthetic", "input")
# A sweep's table holds each candidate aggregated over its seeds already (harness.sweep.table).
SWEEP_AGGREGATES = ("seeds", "minp", *(f"{m}_{s}" for m in INTERVAL_METRICS for s in ("lo", "hi", "std")),
                    *(f"p_front_{a}" for a, _ in PANELS), *_SURE)


def load_sweeps(paths: list[Path]) -> pl.DataFrame:
    """One row per trial of each sweep table (`reports/sweeps/<name>/results.parquet`)."""
    frames = []
    for path in paths:
        try:
            table = pl.read_parquet(path)
        except FileNotFoundError:
            raise UserError(f"sweep table {path} does not exist; run the sweep (python -m harness.sweep --name "
                            f"{path.parent.name}) or drop --sweep {path}") from None
        except (OSError, pl.exceptions.PolarsError) as e:
            raise UserError(f"sweep table {path} is not a parquet file ({type(e).__name__}); rerun the sweep") from None
        missing = [c for c in SWEEP_COLUMNS if c not in table.columns]
        if missing:
            raise UserError(f"sweep table {path} lacks columns {missing}; it was written by an older harness.sweep, "
                            f"rerun or resume the sweep to rewrite it")
        frames.append(table.select(
            run_id=pl.col("mlflow_run_id") if "mlflow_run_id" in table.columns else pl.lit(None, pl.String),
            parent_run_id=pl.lit(path.parent.name), label=pl.col("label"), kind=pl.lit("trial"),
            status=pl.col("status"), dataset=pl.col("dataset"), synthetic=pl.col("synthetic"),
            input=pl.col("input"), gmacs=pl.col("gmacs_input"), rank1=pl.col("rank1"), map=pl.col("map"),
            **{ours: pl.col(theirs) if theirs in table.columns else pl.lit(None, SCHEMA[ours])
               for ours, theirs in (("latency_ms", "latency_ms"), ("latency_device", "latency_device"),
                                    ("gmacs_tracklet", "gmacs_per_tracklet"), ("selection", "selection"),
                                    ("cpu", "cpu"), ("gpu", "gpu"))},
            git_commit=pl.col("git_commit") if "git_commit" in table.columns else pl.lit(None, pl.String),
            config_key=pl.lit(path.parent.name) + "/" + pl.col("label"),
            **{c: pl.col(c) if c in table.columns else pl.lit(None, SCHEMA[c]) for c in SWEEP_AGGREGATES},
        ))
    if not frames:
        return pl.DataFrame(schema=SCHEMA)
    rows = pl.concat(frames, how="diagonal_relaxed")
    return pl.concat([pl.DataFrame(schema=SCHEMA), rows], how="diagonal_relaxed").select(SCHEMA.keys()).cast(SCHEMA)


def load_runs(client: MlflowClient, experiment_id: str) -> pl.DataFrame:
    """One row per training or trial run of the experiment (sweep parents and foreign runs skipped), with the
    per-query outcomes a finished run logged as an artifact, fetched into a temporary folder."""
    rows, token = [], None
    while True:
        page = client.search_runs([experiment_id], run_view_type=ViewType.ACTIVE_ONLY,
                                  max_results=1000, page_token=token)
        rows += [_row(r) | {"queries": _queries_artifact(client, r)} for r in page
                 if r.data.tags.get("nvan.kind") in ("train", "trial")]
        token = page.token
        if not token:
            return pl.DataFrame(rows, schema=SCHEMA)


def _queries_artifact(client: MlflowClient, run) -> str | None:
    """The local path of a run's queries.parquet artifact (harness.train logs it when it finishes), or None."""
    if run.data.tags.get("nvan.status") != "finished":
        return None
    try:
        folder = Path(tempfile.gettempdir()) / "nvan-bench-report" / run.info.run_id
        return client.download_artifacts(run.info.run_id, QUERIES_FILE, str(folder))
    except (MlflowException, OSError):
        return None  # a run from before per-query outcomes were logged: a point without an interval


def select_runs(runs: pl.DataFrame, dataset: str | None, latest_per_label: bool, axis: str = "gmacs") -> pl.DataFrame:
    """Runs of `dataset` (all if None) with their plot group and `cost` (the `axis` column); only each
    label's newest if asked. Latency groups are per device: times from different hardware never share a plot; and
    every test set is a group of its own (`harness.report.testsets`)."""
    if dataset is not None:
        runs = runs.filter(pl.col("dataset") == dataset)
    group = pl.when(pl.col("synthetic")).then(pl.col("dataset") + " (synthetic)").otherwise(pl.col("dataset"))
    group = group.fill_null("unknown dataset")
    if axis == "latency":
        group = group + " on " + pl.col("latency_device").fill_null("an unknown device")
    runs = runs.with_columns(group=group, cost=pl.col(AXES[axis]),
                             config_key=pl.col("config_key").fill_null(pl.col("run_id")).fill_null(pl.col("label")))
    # A rerun of a known seed of a configuration replaces the earlier one.
    known = pl.col("seed").is_not_null()
    runs = pl.concat([runs.filter(known).sort("start_time").unique(["group", "label", "config_key", "seed"],
                                                                   keep="last", maintain_order=True),
                      runs.filter(~known)])
    if latest_per_label:
        newest = runs.sort("start_time").unique(["group", "label"], keep="last").select("group", "label", "config_key")
        runs = runs.join(newest, on=["group", "label", "config_key"], how="semi", maintain_order="left")
    return by_test_set(runs).sort(["group", "cost", "label", "seed"], nulls_last=True)


@functools.cache
def published_points() -> pl.DataFrame:
    """The paper's MARS numbers (percent) at the GMACs our cost model gives at 8x256x128, width 64."""
    return pl.DataFrame([{
        "name": p.name, "preset": p.preset, "rank1_pct": p.rank1, "map_pct": p.map,
        "gmacs": macs_on_meta(preset_spec(p.preset, num_classes=MARS_CLASSES, width=PAPER_WIDTH), PAPER_INPUT) / 1e9,
        "input": PAPER_INPUT.label(),
    } for p in PUBLISHED])



_COST_KEYS = ("name", "input", "model_width", "params", "gmacs")  # every cost record has them


def _cost_hint(path: Path) -> str:
    """What a --cost file is; and a command that writes `path` only where nothing is there to overwrite and its name
    is a preset's."""
    what = (f"--cost takes a JSON file written by `python -m harness.cost --out` (an object with a \"reports\" list), "
            f"such as reports/cost/<preset>.json for a preset of {', '.join(PRESETS)}")
    if path.stem in PRESETS and not (path.exists() or path.is_symlink()):
        return f"{what}; write this one with `python -m harness.cost --preset {path.stem} --out {path}`"
    return what


def load_costs(paths: list[Path]) -> list[dict]:
    """The records of `python -m harness.cost --out` files, in the order given."""
    records = []
    for path in paths:
        fix = _cost_hint(path)
        try:
            found = json.loads(path.read_text(encoding="utf-8"))["reports"]
        except FileNotFoundError:
            raise UserError(f"cost file {path} does not exist; {fix}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(f"cost file {path} is not a harness.cost report ({type(e).__name__}: {e}); {fix}") from None
        for r in found:
            missing = [k for k in _COST_KEYS if not isinstance(r, dict) or k not in r]
            if missing:
                raise UserError(f"cost file {path}: a record lacks {missing} (each needs {list(_COST_KEYS)}); {fix}")
        records += found
    return records



def collect_runs(*, records: list[Path] = (), sweeps: list[Path] = (),
                 mlflow: tuple[str, str] | None = None) -> tuple[pl.DataFrame, str]:
    """Every run to report and a description of where they came from: run records and sweep tables, or
    the MLflow experiment `mlflow` = (tracking URI, experiment name)."""
    if mlflow is not None:
        uri, experiment = mlflow
        return load_runs(*open_experiment(uri, experiment)), f"experiment {experiment!r} in {uri}"
    files = record_files(list(records))
    frames = [load_records(files), load_sweeps(list(sweeps))]
    parts = [records_text(list(records), len(files))] + ([_count(len(sweeps), "sweep table")] if sweeps else [])
    return pl.concat(frames, how="vertical"), " and ".join(parts)


def _count(n: int, noun: str) -> str:
    """'1 folder', '3 folders'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def records_text(paths: list[Path], files: int) -> str:
    """'9 run records (3 folders)': the records read, then the folders and files they were named by."""
    folders = sum(1 for p in paths if p.is_dir())
    named = [_count(n, noun) for n, noun in ((folders, "folder"), (len(paths) - folders, "file")) if n]
    return _count(files, "run record") + (f" ({', '.join(named)})" if folders else "")
