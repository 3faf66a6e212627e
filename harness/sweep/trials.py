"""One sweep trial: train it (or record it infeasible), report it to Tune, and close it from its run record."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from harness import preemption, storage
from harness.errors import UserError
from harness.config import Config
from harness.params import flatten, override
from harness.prepared import prepared_dataset
from harness.evaluate.front import pareto_front
from harness.evaluate.queries import queries_path, read_queries
from harness.evaluate.statistics import FRONT_SCORES, SCORES, Sample, assess, table_values
from harness.results.records import read_record, write_record
from harness.results.tracking import END_STATES, close_run, connect, find_run, log_metrics, set_tags, start_run
from harness.train.driver import fit
from harness.train.plan import check_inputs
from harness.train.outcome import FINAL_KEYS
from harness.measure.run_cost import run_cost
from harness.sweep.space import COST, Candidate, LATENCY, cost_key, feasibility, objective, resolve

log = logging.getLogger("harness.sweep")


class SweepReport(TuneReportCallback):
    """Forwards rank 0's epoch reports to Tune with the objectives added; runs in the Train controller."""

    def __init__(self, fields: dict[str, Any], metric: str, protocol: str) -> None:
        super().__init__()
        self.fields, self.metric, self.protocol = fields, metric, protocol
        self.reported_through = -1

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        first = metrics[0]
        if first["epoch"] <= self.reported_through:  # retrained after a restart from a sparser checkpoint
            return
        self.reported_through = first["epoch"]
        best = (first.get("best_scores") or {}).get(self.protocol, {})
        first = first | self.fields | {"epochs": first["epoch"] + 1,
                                       objective(self.metric): best.get(self.metric, math.nan)}
        super().after_report(run_context, [first, *metrics[1:]], checkpoint)


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
    run_id = start_run(client, experiment_id, tags["nvan.ray_run"], params, tags | {
        "nvan.status": "infeasible", "nvan.reason": reason[:5000], "dataset": base.data.dataset,
        "preset": base.model.preset, "protocol": base.eval.primary,
        "device": "cuda" if base.ray.use_gpu else "cpu"}, parent_run_id, "python -m harness.sweep")
    client.set_terminated(run_id, "FINISHED")
    return run_id


def trial_record_path(root: str, sweep_name: str, trial_id: str, index: int = 0) -> str:
    """The run record of one trial's `index`-th seed: on the storage every node shares (a folder or a URI)."""
    return storage.join(root, sweep_name, "records", f"{trial_id}{f'-seed{index}' if index else ''}.json")


def trial_seeds(config: Config) -> list[int]:
    """The training seeds of every candidate: seed, seed + 1, ..., sweep.seeds of them."""
    return [config.seed + k for k in range(config.sweep.seeds)]


def _read_trial_record(path: str) -> dict | None:
    try:
        return read_record(path)
    except UserError:
        return None


def final_report(records: list[dict], metric: str, fields: dict[str, Any]) -> dict[str, Any]:
    """What Tune is told when every seed of a trial has trained: the objective is the mean over the seeds."""
    best = [r["scores"].get(r["config"]["eval"]["protocols"][0], {}).get(metric, math.nan) for r in records]
    return fields | {objective(metric): float(np.mean(best)), "epochs": records[0]["epochs"], "seeds": len(records),
                     "best_epoch": records[0]["best_epoch"], "mlflow_run_id": records[0]["run"].get("mlflow_run_id")}


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
    # Train runs live in the sweep's folder; their names are unique per trial.
    train_storage = storage.join(config.ray.storage_path, sweep_name, "train")
    trial = override(config, candidate.overrides() | {"ray.storage_path": train_storage}, f"candidate {label}")
    record_path = trial_record_path(config.ray.storage_path, sweep_name, trial_id)
    record = _read_trial_record(record_path)
    cost = None
    if config.sweep.cost_objective == "latency":
        # Timed before training, with this trial's worker resources; a resumed trial keeps its first figure.
        prepared = check_inputs(trial)
        cost = (record or {}).get("cost") or run_cost(trial, trial.spec(prepared.num_classes), prepared.directory)
    fields = costs | {"label": label, LATENCY: latency_ms(cost)}
    records = []
    for index, seed in enumerate(trial_seeds(config)):
        path = trial_record_path(config.ray.storage_path, sweep_name, trial_id, index)
        found = record if index == 0 else _read_trial_record(path)
        if found is None or found.get("status") != "finished":
            # Only the first seed reports its epochs to Tune (ASHA stops trials on it); the others only train.
            name = ray_run if index == 0 else f"{ray_run}-seed{seed}"
            callbacks = [SweepReport(fields, config.sweep.metric, trial.eval.primary)] if index == 0 else None
            train_seed(override(trial, {"seed": seed}, f"candidate {label}"), name, parent_run_id,
                       tags | {"nvan.ray_run": name}, callbacks, path, label, cost)
            found = read_record(path)
        records.append(found)
    tune.report(final_report(records, config.sweep.metric, fields))


def train_seed(trial: Config, ray_run: str, parent_run_id: str, tags: dict[str, str], callbacks: list | None,
               record_path: str, label: str, cost: dict | None) -> None:
    """Train one seed of a trial as its own Ray Train run (and MLflow run, nested in the sweep's), continuing
    it from its checkpoint when Tuner.restore restarts the trial."""
    # One stopped before its Train run began starts over, without the empty MLflow run it left.
    resume = ray_run if storage.is_dir(storage.join(trial.ray.storage_path, ray_run)) else None
    if resume is None:
        client, experiment_id = connect(trial.mlflow.tracking_uri, trial.mlflow.experiment)
        if orphan := find_run(client, experiment_id, "nvan.ray_run", ray_run):
            client.delete_run(orphan)
    fit(trial, name=ray_run, resume=resume, parent_run_id=parent_run_id, tags=tags, progress=False,
        tune_callbacks=callbacks, record_to=record_path, label=label, kind="trial", cost=cost)


def latency_ms(cost: dict[str, Any] | None) -> float:
    """Median latency (ms per clip) of a run's cost, NaN where it was not measured."""
    latency = (cost or {}).get("latency") or {}
    return 1e3 * latency["median_s"] if "median_s" in latency else math.nan


def release_workers(placement_group: str) -> bool:
    """Remove a Train run's worker placement group (hex id) unless already removed; True if removed."""
    import ray
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    group = PlacementGroup(ray.PlacementGroupID(bytes.fromhex(placement_group)))
    if placement_group_table(group).get("state") in (None, "REMOVED"):
        return False
    remove_placement_group(group)
    return True


class TrialEnds(tune.Callback):
    """One flushed console line per ended trial; frees the Train workers of trials stopped early.

    Tune stops a trial by killing its driver, which leaves the Ray Train workers' placement
    group reserved (ray#54305; Ray's own cleaner needs the dashboard's State API), so the
    next trials would wait for CPUs forever.
    """

    def __init__(self, metric: str, epochs: int, cost: str = COST) -> None:
        self.metric, self.epochs, self.cost = metric, epochs, cost

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        r = trial.last_result or {}
        if r.get("status") == "infeasible":
            print(f"trial {r.get('label', trial.trial_id)} infeasible: {r.get('reason')}", flush=True)
            return
        if r.get("placement_group"):
            release_workers(r["placement_group"])
        outcome = "finished" if r.get("epochs", 0) >= self.epochs else "stopped early"
        print(f"trial {r.get('label', trial.trial_id)} {outcome}: {self.metric} "
              f"{100 * r.get(objective(self.metric), math.nan):.2f}% at {r.get(self.cost, math.nan):.3f} "
              f"{'GMACs' if self.cost == COST else 'ms'} "
              f"after {r.get('epochs', 0)} epoch(s)", flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        if (trial.last_result or {}).get("placement_group"):
            release_workers(trial.last_result["placement_group"])
        print(f"trial {trial.trial_id} failed: see {trial.local_path}", flush=True)



def trial_outcome(tune_status: str, record: dict | None, infeasible: bool, others: list[dict | None] = ()) -> str:
    """A trial's status in the sweep table, from Tune's state of the trial and its seeds' run records.

    The records say how far the trial trained (`record` its first seed, `others` the rest); Tune says
    why it stopped. A trial whose every seed trained all its epochs is finished, whatever Tune saved
    (an interrupt can fall between the two).
    """
    if infeasible:
        return "infeasible"
    if all(r is not None and (r.get("status") == "finished" or r["epochs"] >= r["config"]["train"]["epochs"])
           for r in [record, *others]):
        return "finished"  # every epoch trained, even if the run stopped before its bookkeeping
    if others and record is not None and record.get("status") == "finished":
        return "failed" if tune_status == "ERROR" else "interrupted"  # seeds left to train
    if tune_status == "ERROR":
        return "failed"
    if tune_status == "TERMINATED" and record is not None:
        return "early-stopped"  # Tune ended it before its last epoch: ASHA
    return "interrupted"


def close_trials(base: Config, trials: list, sweep_name: str, parent_run_id: str) -> tuple[pl.DataFrame, bool]:
    """One row per Tune trial, built from its seeds' run records; MLflow runs and records closed to match.

    A trial's scores are the means over its seeds, with their std, 95 % intervals (seeds x queries) and
    P(on the front) among the sweep's trials. Returns the table and whether the sweep is complete.
    """
    client, experiment_id = connect(base.mlflow.tracking_uri, base.mlflow.experiment)
    metric, protocol = base.sweep.metric, base.eval.primary
    manifest = prepared_dataset(base.data).manifest
    rows, complete, found = [], True, {}
    for trial in sorted(trials, key=lambda t: trial_number(t.experiment_tag)):
        r = trial.last_result or {}
        paths = [trial_record_path(base.ray.storage_path, sweep_name, trial.trial_id, i) for i in range(base.sweep.seeds)]
        records = [_read_trial_record(path) for path in paths]
        record = records[0]
        candidate, number = resolve(base, trial.config), trial_number(trial.experiment_tag)
        label = (record or {}).get("label") or r.get("label") or f"t{number:03d} {candidate.label(list(trial.config))}"
        # Feasibility is decided here again, not read from Tune: an interrupt can end an infeasible
        # trial before Tune saved its report.
        costs, reason = feasibility(base, candidate, label)
        status = trial_outcome(trial.status, record, reason is not None, records[1:])
        if status in ("interrupted", "failed") and preemption.requested():
            status = "preempted"  # stopped by the SIGTERM (its workers may have died of it first), not broken
        complete &= status not in ("interrupted", "preempted")
        run_id = (record or {}).get("run", {}).get("mlflow_run_id") or r.get("mlflow_run_id") or find_run(
            client, experiment_id, "nvan.trial_id", trial.trial_id)
        if reason is not None and not run_id:
            run_id = record_infeasible(base, candidate, reason, trial_tags(label, sweep_name, trial.trial_id),
                                       parent_run_id)
        close_seed_runs(client, paths, records, status)
        scored = [(path, rec) for path, rec in zip(paths, records) if rec and rec["scores"].get(protocol)]
        if scored and status in ("finished", "early-stopped"):
            found[len(rows)] = [queries_path(path) for path, _ in scored]
        cost = (record or {}).get("cost") or {}
        rows.append({
            "trial": number, "trial_id": trial.trial_id, "label": label, "status": status, **candidate.columns(),
            **seed_scores([rec["scores"][protocol] for _, rec in scored]), "seeds": len(scored),
            "best_epoch": (record or {}).get("best_epoch"), "epochs": (record or {}).get("epochs", 0),
            COST: costs.get(COST), "gmacs_input": costs.get("gmacs_input"), LATENCY: latency_ms(cost),
            "gmacs_per_tracklet": cost.get("gmacs_per_tracklet"), "latency_device": (cost.get("latency") or {}).get("device"),
            "seconds": r.get("time_total_s"), "mlflow_run_id": run_id, "reason": reason,
            "dataset": base.data.dataset, "synthetic": bool(manifest.get("synthetic", False)),
            "input": f"{candidate.frames}x{base.data.height}x{base.data.width}",
            "git_commit": (record or {}).get("git_commit"),
        })
    frame = pl.DataFrame(rows, schema_overrides=RESULT_TYPES)
    frame = frame.with_columns(pl.col("map", "rank1", "minp", COST, "gmacs_input", LATENCY).fill_nan(None))
    eligible = frame.with_columns(pl.when(pl.col("status").is_in(["finished", "early-stopped"]))
                                  .then(pl.col(metric)).alias("_acc"))
    frame = with_trial_intervals(frame.with_columns(pareto_front(eligible, "_acc", cost_key(base.sweep))), found, protocol,
                             cost_key(base.sweep), base.report.draws)
    for row in frame.filter(pl.col("mlflow_run_id").is_not_null()).iter_rows(named=True):
        set_tags(client, row["mlflow_run_id"], {"nvan.pareto": str(row["pareto"]).lower()})
    return frame, complete


RESULT_TYPES = {"map": pl.Float64, "rank1": pl.Float64, "minp": pl.Float64, "best_epoch": pl.Int64, COST: pl.Float64,
                "gmacs_input": pl.Float64, LATENCY: pl.Float64, "latency_device": pl.String,
                "gmacs_per_tracklet": pl.Float64, "seconds": pl.Float64, "mlflow_run_id": pl.String,
                "reason": pl.String, "lr": pl.Float64, "git_commit": pl.String,
                **{f"{m}_std": pl.Float64 for m in ("rank1", "map", "minp")}}


def seed_scores(scores: list[dict[str, float]]) -> dict[str, float | None]:
    """A candidate's rank-1, mAP and mINP: the means over its seeds' best scores, and their sample std."""
    out = {}
    for m in ("rank1", "map", "minp"):
        values = [s[m] for s in scores]
        out[m] = float(np.mean(values)) if values else None
        out[f"{m}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return out


def close_seed_runs(client, paths: list[str], records: list[dict | None], status: str) -> None:
    """Bring each seed's record and MLflow run to the trial's status (best scores logged where it trained)."""
    for path, record in zip(paths, records):
        if record is None:
            continue
        if record["status"] != status:
            write_record(path, record | {"status": status})
        run_id = record.get("run", {}).get("mlflow_run_id")
        if run_id and status in END_STATES and client.get_run(run_id).data.tags.get("nvan.status") != status:
            best = record["scores"].get(record["config"]["eval"]["protocols"][0], {})
            if status in ("early-stopped", "finished"):
                log_metrics(client, run_id, {f"best.{k}": best[k] for k in FINAL_KEYS if k in best}
                            | {"best.epoch": record["best_epoch"]}, step=max(record["epochs"] - 1, 0))
            close_run(client, run_id, status)


def with_trial_intervals(frame: pl.DataFrame, queries: dict[int, list[str]], protocol: str, cost: str,
                     draws: int) -> pl.DataFrame:
    """The results table with each trained candidate's 95 % intervals (seeds x identity-clustered queries) of
    rank-1, mAP and mINP, and its P(on the front) and sure-front of rank-1 and mAP against the sweep's cost
    objective (`harness.evaluate.statistics.assess`)."""
    columns = {f"{m}_{s}": [None] * frame.height for m in ("rank1", "map", "minp") for s in ("lo", "hi")}
    columns |= {f"p_front_{m}": [None] * frame.height for m in FRONT_SCORES}
    columns |= {f"sure_{m}": [False] * frame.height for m in FRONT_SCORES}
    samples = {}
    for row, files in queries.items():
        if all(storage.exists(f) for f in files):
            found = [table_values(read_queries(f), protocol) for f in files]
            # Every trial trains seeds seed, seed + 1, ...: its k-th seed pairs with every other trial's k-th.
            samples[row] = Sample(tuple(range(len(found))), np.stack([v for v, _ in found]), found[0][1])
    # The rivals on the front are the trials it is drawn from (as `pareto_front`): trained, with a cost and scores.
    placed = {row: frame[cost][row] for row in range(frame.height)
              if frame["status"][row] in ("finished", "early-stopped") and frame[cost][row] is not None
              and all(frame[m][row] is not None for m in FRONT_SCORES)}
    for row, found in assess(samples, placed, draws).items():
        for m in ("rank1", "map", "minp"):
            i = SCORES.index(m)
            columns[f"{m}_lo"][row], columns[f"{m}_hi"][row] = float(found.lo[i]), float(found.hi[i])
        for m in FRONT_SCORES:
            columns[f"p_front_{m}"][row], columns[f"sure_{m}"][row] = found.p_front[m], found.sure[m]
    return frame.with_columns(pl.Series(name, values, dtype=pl.Boolean if name.startswith("sure_") else pl.Float64)
                              for name, values in columns.items())
