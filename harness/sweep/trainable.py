"""The Tune trainable: one sweep trial trains its candidate's seeds (or records it infeasible) and reports them to
Tune."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune

from harness import storage
from harness.errors import UserError
from harness.config import Config
from harness.params import flatten, override
from harness.results.records import RunRecord, read_record
from harness.results.tracking import close_run, connect, run_tags, start_run
from harness.train.seeds import seed_run_name, train_seed
from harness.train.plan import check_inputs
from harness.measure.run_cost import run_cost
from harness.sweep.callbacks import SweepReport
from harness.sweep.space import COST, Candidate, LATENCY, feasibility, objective, resolve


def trial_number(tag: str) -> int:
    """Tune's sweep-wide trial number, which starts its experiment tag ('3_placement=p0230,...')."""
    return int(tag.split("_", 1)[0])


def trial_tags(label: str, sweep_name: str, trial_id: str) -> dict[str, str]:
    """The MLflow tags naming a trial's run."""
    return {"nvan.kind": "trial", "nvan.label": label, "nvan.sweep": sweep_name, "nvan.trial_id": trial_id,
            "nvan.ray_run": f"{sweep_name}-{trial_id}"}


def record_infeasible(base: Config, candidate: Candidate, reason: str, tags: dict[str, str],
                      parent_run_id: str) -> str:
    """An MLflow trial run, nested and closed, recording a candidate rejected before training."""
    client, experiment_id = connect(base.mlflow.tracking_uri, base.mlflow.experiment)
    params = flatten(base) | {k: str(v) if isinstance(v, list) else v for k, v in candidate.overrides().items()}
    params["input"] = f"{candidate.frames}x{base.data.height}x{base.data.width}"
    run_id = start_run(client, experiment_id, tags["nvan.ray_run"], params,
                       run_tags("trial", tags["nvan.label"], base, **tags, **{"nvan.reason": reason[:5000]}),
                       parent_run_id, "python -m harness.sweep")
    close_run(client, run_id, "infeasible")
    return run_id


def trial_record_path(root: str, sweep_name: str, trial_id: str, index: int = 0) -> str:
    """The run record of one trial's `index`-th seed: on the storage every node shares (a folder or a URI)."""
    return storage.join(root, sweep_name, "records", f"{trial_id}{f'-seed{index}' if index else ''}.json")


def trial_seeds(config: Config) -> list[int]:
    """The seeds every candidate trains in its Tune trial: seed, seed + 1, ..., sweep.seeds (adaptive: min_seeds)
    of them."""
    return [config.seed + k for k in range(config.sweep.first_seeds)]


def trial_config(config: Config, candidate: Candidate, sweep_name: str, label: str) -> Config:
    """The config a candidate's seeds train with (but their seed): the candidate's overrides, its Train runs in the
    sweep's folder."""
    train_storage = storage.join(config.ray.storage_path, sweep_name, "train")  # run names are unique per trial
    return override(config, candidate.overrides() | {"ray.storage_path": train_storage}, f"candidate {label}")


def read_trial_record(path: str) -> RunRecord | None:
    """The run record at `path`, or None where none can be read (not written yet, or broken)."""
    try:
        return read_record(path)
    except UserError:
        return None


def final_report(records: list[RunRecord], metric: str, fields: dict[str, Any]) -> dict[str, Any]:
    """What Tune is told when every seed of a trial has trained: the objective is the mean over the seeds."""
    best = [getattr(r.primary_scores, metric) for r in records]
    return fields | {objective(metric): float(np.mean([math.nan if b is None else b for b in best])),
                     "epochs": records[0].epochs, "seeds": len(records), "best_epoch": records[0].best_epoch,
                     "mlflow_run_id": records[0].run.mlflow_run_id}


def run_trial(params: dict[str, Any], base: dict[str, Any], sweep_name: str, parent_run_id: str) -> None:
    """Tune trainable: train one candidate (or record it infeasible) as an MLflow run nested in the sweep's."""
    config = Config.model_validate(base)
    context = tune.get_context()
    trial_id = context.get_trial_id()
    # The trial folder is named '<trainable>_<trial id>_<experiment tag>'.
    number = trial_number(Path(context.get_trial_dir()).name.split(f"{trial_id}_", 1)[1])
    candidate = resolve(config, params)
    label = f"t{number:03d} {candidate.label(list(params))}"
    tags = trial_tags(label, sweep_name, trial_id)
    ray_run = tags["nvan.ray_run"]
    costs, reason = feasibility(config, candidate, label)
    if reason is not None:
        run_id = record_infeasible(config, candidate, reason, tags, parent_run_id)
        # NaN objectives: Optuna records the point as failed, ASHA ignores it.
        tune.report({objective(config.sweep.metric): math.nan, COST: math.nan, LATENCY: math.nan, "epochs": 0,
                     "label": label,
                     "status": "infeasible", "reason": reason, "mlflow_run_id": run_id})
        return
    trial = trial_config(config, candidate, sweep_name, label)
    record_path = trial_record_path(config.ray.storage_path, sweep_name, trial_id)
    record = read_trial_record(record_path)
    cost = None
    if config.sweep.cost_objective == "latency":
        # Timed before training, with this trial's worker resources; a resumed trial keeps its first figure.
        prepared = check_inputs(trial)
        # As written, since it goes into every seed's record again.
        cost = (record and record.written()["cost"]) or run_cost(
            trial, trial.spec(prepared.num_classes), prepared.directory)
    fields = costs | {"label": label, LATENCY: latency_ms(cost)}
    records = []
    for index, seed in enumerate(trial_seeds(config)):
        path = trial_record_path(config.ray.storage_path, sweep_name, trial_id, index)
        found = record if index == 0 else read_trial_record(path)
        if found is None or found.status != "finished":
            # Only the first seed reports its epochs to Tune (ASHA stops trials on it); the others only train.
            name = ray_run if index == 0 else seed_run_name(ray_run, seed)
            callbacks = [SweepReport(fields, config.sweep.metric, trial.eval.primary)] if index == 0 else None
            # Tuner.restore restarts an interrupted trial: its seeds continue from their checkpoints.
            train_seed(override(trial, {"seed": seed}, f"candidate {label}"), name, path, True,
                       parent_run_id=parent_run_id, tags=tags | {"nvan.ray_run": name}, cost=cost, label=label,
                       kind="trial", callbacks=callbacks)
            found = read_record(path)
        records.append(found)
    tune.report(final_report(records, config.sweep.metric, fields))


def latency_ms(cost: dict[str, Any] | None) -> float:
    """Median latency (ms per clip) of a run's cost, NaN where it was not measured."""
    latency = (cost or {}).get("latency") or {}
    return 1e3 * latency["median_s"] if "median_s" in latency else math.nan
