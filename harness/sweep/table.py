"""The sweep's results table: one row per trial from its seeds' run records, with intervals and the front; each
trial's records and MLflow runs closed to match."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from harness import preemption, storage
from harness.config import Config
from harness.prepared import prepared_dataset
from harness.evaluate.queries import queries_path
from harness.evaluate.statistics import FRONT_SCORES, SCORES, read_sample
from harness.evaluate.front import assess, pareto_front
from harness.results.records import RunRecord, _Scores, write_record
from harness.results.tracking import END_STATES, close_run, connect, find_run, log_metrics, set_tags
from harness.train.outcome import FINAL_KEYS
from harness.sweep.race import FIXED, race_trials
from harness.sweep.space import COST, LATENCY, cost_key, feasibility, resolve
from harness.sweep.trainable import read_trial_record, record_infeasible, trial_number, trial_record_path, trial_tags


def trial_outcome(tune_status: str, record: RunRecord | None, infeasible: bool,
                  others: list[RunRecord | None] = ()) -> str:
    """A trial's status in the sweep table, from Tune's state of the trial and its seeds' run records.

    The records say how far the trial trained (`record` its first seed, `others` the rest); Tune says
    why it stopped. A trial whose every seed trained all its epochs is finished, whatever Tune saved
    (an interrupt can fall between the two).
    """
    if infeasible:
        return "infeasible"
    if all(r is not None and (r.status == "finished" or r.epochs >= r.config.train.epochs) for r in [record, *others]):
        return "finished"  # every epoch trained, even if the run stopped before its bookkeeping
    if others and record is not None and record.status == "finished":
        return "failed" if tune_status == "ERROR" else "interrupted"  # seeds left to train
    if tune_status == "ERROR":
        return "failed"
    if tune_status == "TERMINATED" and record is not None:
        return "early-stopped"  # Tune ended it before its last epoch: ASHA
    return "interrupted"


def close_trials(base: Config, trials: list, sweep_name: str, parent_run_id: str,
                 races: dict[str, str] | None = None) -> tuple[pl.DataFrame, bool]:
    """One row per Tune trial, built from its seeds' run records; MLflow runs and records closed to match.

    A trial's scores are the means over its seeds, with their std, 95 % intervals (seeds x queries) and
    P(on the front) among the sweep's trials, and how its race for seeds ended (`races`, the verdicts of a race just
    run, else replayed from the records). Returns the table and whether the sweep is complete.
    """
    client, experiment_id = connect(base.mlflow.tracking_uri, base.mlflow.experiment)
    metric, protocol = base.sweep.metric, base.eval.primary
    if races is None:
        races = race_trials(base, trials, sweep_name) if base.sweep.adaptive else {}
    manifest = prepared_dataset(base.data).manifest
    rows, complete, found = [], True, {}
    for trial in sorted(trials, key=lambda t: trial_number(t.experiment_tag)):
        r = trial.last_result or {}
        paths, records = trial_seed_records(base, sweep_name, trial.trial_id)
        record = records[0]
        candidate, number = resolve(base, trial.config), trial_number(trial.experiment_tag)
        label = (record and record.label) or r.get("label") or f"t{number:03d} {candidate.label(list(trial.config))}"
        # Feasibility is decided here again, not read from Tune: an interrupt can end an infeasible
        # trial before Tune saved its report.
        costs, reason = feasibility(base, candidate, label)
        status = trial_outcome(trial.status, record, reason is not None, records[1:])
        if status in ("interrupted", "failed") and preemption.requested():
            status = "preempted"  # stopped by the SIGTERM (its workers may have died of it first), not broken
        complete &= status not in ("interrupted", "preempted")
        run_id = (record and record.run.mlflow_run_id) or r.get("mlflow_run_id") or find_run(
            client, experiment_id, "nvan.trial_id", trial.trial_id)
        if reason is not None and not run_id:
            run_id = record_infeasible(base, candidate, reason, trial_tags(label, sweep_name, trial.trial_id),
                                       parent_run_id)
        close_seed_runs(client, paths, records, status)
        scored = [(path, rec) for path, rec in zip(paths, records) if rec and protocol in rec.scores]
        if scored and status in ("finished", "early-stopped"):
            found[len(rows)] = [queries_path(path) for path, _ in scored]
        latency = record and record.cost.latency
        rows.append({
            "trial": number, "trial_id": trial.trial_id, "label": label, "status": status, **candidate.columns(),
            **seed_scores([rec.scores[protocol] for _, rec in scored]), "seeds": len(scored),
            "race": races.get(trial.trial_id) if base.sweep.adaptive else FIXED if status == "finished" else None,
            "best_epoch": record and record.best_epoch, "epochs": record.epochs if record else 0,
            COST: costs.get(COST), "gmacs_input": costs.get("gmacs_input"),
            LATENCY: 1e3 * latency.median_s if latency else math.nan,
            "gmacs_per_tracklet": record and record.cost.gmacs_per_tracklet, "latency_device": latency and latency.device,
            "seconds": r.get("time_total_s"), "mlflow_run_id": run_id, "reason": reason,
            "dataset": base.data.dataset, "synthetic": bool(manifest.get("synthetic", False)),
            "input": f"{candidate.frames}x{base.data.height}x{base.data.width}",
            "git_commit": record and record.git_commit,
        })
    frame = pl.DataFrame(rows, schema_overrides=RESULT_TYPES)
    frame = frame.with_columns(pl.col("map", "rank1", "minp", COST, "gmacs_input", LATENCY).fill_nan(None))
    eligible = frame.with_columns(pl.when(pl.col("status").is_in(["finished", "early-stopped"]))
                                  .then(pl.col(metric)).alias("_acc"))
    cost_column = cost_key(base.sweep)
    frame = with_trial_intervals(frame.with_columns(pareto_front(eligible, "_acc", cost_column)), found, protocol,
                                 cost_column, base.report.draws)
    for row in frame.filter(pl.col("mlflow_run_id").is_not_null()).iter_rows(named=True):
        set_tags(client, row["mlflow_run_id"], {"nvan.pareto": str(row["pareto"]).lower()})
    return frame, complete


def trial_seed_records(base: Config, sweep_name: str, trial_id: str) -> tuple[list[str], list[RunRecord | None]]:
    """The record paths of a trial's seeds and their records (None: not written): sweep.seeds of them, or (adaptive)
    min_seeds and each seed a race added after them."""
    sweep = base.sweep
    paths, records = [], []
    for index in range(sweep.most_seeds):
        path = trial_record_path(base.ray.storage_path, sweep_name, trial_id, index)
        record = read_trial_record(path)
        if record is None and index >= sweep.first_seeds:
            break  # a race adds seeds in order: none after a missing one
        paths.append(path)
        records.append(record)
    return paths, records


RESULT_TYPES = {"map": pl.Float64, "rank1": pl.Float64, "minp": pl.Float64, "best_epoch": pl.Int64, COST: pl.Float64,
                "gmacs_input": pl.Float64, LATENCY: pl.Float64, "latency_device": pl.String,
                "gmacs_per_tracklet": pl.Float64, "seconds": pl.Float64, "mlflow_run_id": pl.String,
                "reason": pl.String, "lr": pl.Float64, "git_commit": pl.String, "race": pl.String,
                **{f"{m}_std": pl.Float64 for m in ("rank1", "map", "minp")}}


def seed_scores(scores: list[_Scores]) -> dict[str, float | None]:
    """A candidate's rank-1, mAP and mINP: the means over its seeds' best scores, and their sample std."""
    out = {}
    for m in ("rank1", "map", "minp"):
        values = [getattr(s, m) for s in scores]
        out[m] = float(np.mean(values)) if values else None
        out[f"{m}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return out


def close_seed_runs(client, paths: list[str], records: list[RunRecord | None], status: str) -> None:
    """Bring each seed's record and MLflow run to the trial's status (best scores logged where it trained)."""
    for path, record in zip(paths, records):
        if record is None:
            continue
        if record.status != status:
            write_record(path, record.written() | {"status": status})  # the rest as written, byte for byte
        run_id = record.run.mlflow_run_id
        if run_id and status in END_STATES and client.get_run(run_id).data.tags.get("nvan.status") != status:
            best = record.primary_scores.model_dump(include=set(FINAL_KEYS), exclude_none=True)
            if status in ("early-stopped", "finished"):
                log_metrics(client, run_id, {f"best.{k}": v for k, v in best.items()}
                            | {"best.epoch": record.best_epoch}, step=max(record.epochs - 1, 0))
            close_run(client, run_id, status)


def with_trial_intervals(frame: pl.DataFrame, queries: dict[int, list[str]], protocol: str, cost: str,
                         draws: int) -> pl.DataFrame:
    """The results table with each trained candidate's 95 % intervals (seeds x identity-clustered queries) of
    rank-1, mAP and mINP, and its P(on the front) and sure-front of rank-1 and mAP against the sweep's cost
    objective (`harness.evaluate.statistics.assess`)."""
    columns = {f"{m}_{s}": [None] * frame.height for m in ("rank1", "map", "minp") for s in ("lo", "hi")}
    columns |= {f"p_front_{m}": [None] * frame.height for m in FRONT_SCORES}
    columns |= {f"sure_{m}": [False] * frame.height for m in FRONT_SCORES}
    # Every trial trains seeds seed, seed + 1, ...: its k-th seed pairs with every other trial's k-th.
    samples = {row: read_sample(list(enumerate(files)), protocol) for row, files in queries.items()
               if all(storage.exists(f) for f in files)}
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
