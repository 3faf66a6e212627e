"""Ray Tune sweeps of accuracy against cost over non-local placement, reduction and sampling (python -m harness.sweep).

Each Tune trial is a small driver holding one `trial_driver` custom resource and no CPU. It
resolves its point of the search space against the trial config, rejects infeasible points
before any training (an MLflow run with nvan.status=infeasible), counts the candidate's MACs
on the meta device, then runs `harness.train.fit`: a Ray Train job with its own workers and
resources, tracked as an MLflow run nested under the sweep's. `SweepReport` forwards each
epoch to Tune with both objectives added, so Optuna (max accuracy, min GMACs) and ASHA (early
stopping on accuracy) see them. The cost objective is GMACs, or (sweep.cost_objective: latency)
the latency each trial measures before training, with one of its workers' resources on the
cluster, so on the device it trains on. The driver then closes the trials' runs, marks the Pareto
front and writes reports/sweeps/<name>/results.parquet.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from harness import storage
from harness.cli import UserError, config_parser, load_from_args, run
from harness.config import (PAPER_INPUT, TEMPORAL_POOLS, Config, ConfigError, InputSize, SweepConfig, flatten,
                            override, placement_blocks)
from harness.cost import macs_on_meta
from harness.io import atomic_path, check_writable
from harness.records import read_record, write_record
from harness.tracking import connect, find_run, git_commit, log_metrics, set_tags, start_run, tracking_uri
from harness.prepared import prepared_dataset
from datasets.loaders import TrainClips
from harness.train import FINAL_KEYS, check_inputs, check_resources, fit, ray_session, run_cost
from models.spec import SpecError

log = logging.getLogger("harness.sweep")

COST = "gmacs"  # GMACs per clip at T x 256 x 128: Tune results and results-table key
LATENCY = "latency_ms"  # measured ms per clip on the trial's device: likewise
STATE_FILE = "nvan-sweep.json"  # beside Tune's experiment state: the config and parent run to resume with
EXTRA_DIMS = ("sampler", "stride", "lr", "width")  # searched dimensions named in labels only when searched


def cost_key(sweep: SweepConfig) -> str:
    """The cost objective's key in Tune results and the results table: GMACs or latency (ms per clip)."""
    return LATENCY if sweep.cost_objective == "latency" else COST


COST_LABELS = {COST: f"GMACs per clip at T x {PAPER_INPUT.height} x {PAPER_INPUT.width} (1 MAC = 1 multiply-accumulate)",
               LATENCY: "latency, ms per clip (median), measured with each trial's worker resources"}


def objective(metric: str) -> str:
    """The accuracy objective's key in Tune results: the metric at the best checkpoint so far.

    Present at every epoch (NaN before the first evaluation); ASHA's rungs compare trials on it,
    which is fair because every trial is evaluated at the same epochs.
    """
    return f"best.{metric}"


@dataclass(frozen=True)
class Candidate:
    """One point of the search space resolved against the trial config: what the trial trains."""

    non_local: tuple[int, ...]
    stripes: tuple[int, ...]
    nl_window: int
    temporal_pool_after: tuple[int, ...]
    frames: int
    sampler: str
    stride: int
    lr: float
    width: int

    @property
    def placement(self) -> str:
        return "p" + "".join(str(n) for n in self.non_local)

    @property
    def pool(self) -> str:
        return "".join(str(s) for s in self.temporal_pool_after) or "none"

    def overrides(self) -> dict[str, Any]:
        """Dotted-key params that turn the trial config into this candidate."""
        return {
            "model.non_local": list(self.non_local), "model.stripes": list(self.stripes),
            "model.nl_window": self.nl_window, "model.temporal_pool_after": list(self.temporal_pool_after),
            "model.width": self.width, "data.frames": self.frames, "train.sampler": self.sampler,
            "train.stride": self.stride, "train.lr": self.lr,
        }

    def label(self, searched: list[str]) -> str:
        """Short plot label, e.g. 'p0230 s8 w2 tp23 T4' plus any other searched dimension."""
        stripes = max((s for s, n in zip(self.stripes, self.non_local) if n), default=0)
        extra = "".join(f" {k}={getattr(self, k):g}" if k == "lr" else f" {k}={getattr(self, k)}"
                        for k in EXTRA_DIMS if k in searched)
        return f"{self.placement} s{stripes} w{self.nl_window} tp{self.pool} T{self.frames}{extra}"

    def columns(self) -> dict[str, Any]:
        """The candidate as results-table columns."""
        return {"placement": self.placement, "stripes": list(self.stripes), "nl_window": self.nl_window,
                "temporal_pool": self.pool, "frames": self.frames, "sampler": self.sampler, "stride": self.stride,
                "lr": self.lr, "width": self.width}


def resolve(base: Config, params: dict[str, Any]) -> Candidate:
    """The candidate of Tune's sampled `params`; dimensions not searched keep `base`'s values."""
    spec = base.model.spec(num_classes=1)
    non_local = placement_blocks(params["placement"]) if "placement" in params else spec.non_local
    # One stripe count for the stages that have non-local blocks (elsewhere stripes do nothing).
    stripes = tuple(params["stripes"] if n else 0 for n in non_local) if "stripes" in params else spec.stripes
    return Candidate(
        non_local=tuple(non_local), stripes=tuple(stripes), nl_window=params.get("window", spec.nl_window),
        temporal_pool_after=TEMPORAL_POOLS[params["temporal_pool"]] if "temporal_pool" in params
        else spec.temporal_pool_after,
        frames=params.get("frames", base.data.frames), sampler=params.get("sampler", base.train.sampler),
        stride=params.get("stride", base.train.stride), lr=params.get("lr", base.train.lr),
        width=params.get("width", base.model.width),
    )


def _dotted(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out |= _dotted(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return out


def trial_base(config: Config) -> Config:
    """The config every trial starts from: sweep.trial applied, paths absolute; ConfigError names the key."""
    base = override(config, _dotted(config.sweep.trial), "sweep.trial")
    sweep = base.sweep
    if sweep.scheduler == "asha" and sweep.grace_period < base.eval.every:
        raise ConfigError(
            f"sweep.grace_period = {sweep.grace_period} epochs comes before the trials' first evaluation "
            f"(eval.every = {base.eval.every}), so ASHA would compare trials with no {sweep.metric}; set "
            f"sweep.grace_period >= eval.every (e.g. sweep.trial.eval.every: 1), or sweep.scheduler: fifo"
        )
    if sweep.scheduler == "asha" and base.train.epochs <= sweep.grace_period:
        raise ConfigError(
            f"sweep.grace_period = {sweep.grace_period} epochs leaves ASHA nothing to stop in trials of "
            f"train.epochs = {base.train.epochs}; raise sweep.trial.train.epochs, lower the grace period, "
            f"or set sweep.scheduler: fifo"
        )
    if sweep.cost_objective == "latency" and not base.cost.measure:
        raise ConfigError("sweep.cost_objective = 'latency' minimises the latency each trial measures, but "
                          "cost.measure is false; set cost.measure: true, or sweep.cost_objective: gmacs")
    # Tune starts trials in their own folders and possibly on other nodes: no relative paths.
    paths = {"data.prepared_root": str(base.data.prepared_root.resolve()),
             "ray.storage_path": storage.absolute(base.ray.storage_path),
             "mlflow.tracking_uri": tracking_uri(base.mlflow.tracking_uri)}
    if base.train.imagenet_init:
        paths["train.imagenet_init"] = str(base.train.imagenet_init.resolve())
    return override(base, paths, "sweep.trial")


def candidate_costs(config: Config) -> dict[str, float]:
    """GMACs per clip of a trial's model: the objective (at T x 256 x 128) and at the trial's own input."""
    spec = config.model.spec(config.cost.num_classes)
    costed = InputSize(frames=config.sweep.cost_frames or config.data.frames,
                       height=PAPER_INPUT.height, width=PAPER_INPUT.width)
    try:
        spec.validate_input(costed.frames, costed.height, costed.width)
    except SpecError as e:
        raise SpecError(f"at the costed input {costed.label()} (sweep.cost_frames): {e}") from None
    return {COST: macs_on_meta(spec, costed) / 1e9, "gmacs_input": macs_on_meta(spec, config.data.input) / 1e9}


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


def feasibility(base: Config, candidate: Candidate, label: str) -> tuple[dict[str, float], str | None]:
    """The candidate's costs (GMACs) and None, or no costs and why it cannot be trained."""
    try:
        return candidate_costs(override(base, candidate.overrides(), f"candidate {label}")), None
    except (ConfigError, SpecError) as e:
        return {}, str(e)


def record_infeasible(base: Config, candidate: Candidate, reason: str, tags: dict[str, str],
                      parent_run_id: str) -> str:
    """An MLflow trial run, nested and closed, recording a candidate rejected before training."""
    client, experiment_id = connect(base.mlflow.tracking_uri, base.mlflow.experiment)
    params = flatten(base) | {k: str(v) if isinstance(v, list) else v for k, v in candidate.overrides().items()}
    params["input"] = f"{candidate.frames}x{base.data.height}x{base.data.width}"
    run_id = start_run(client, experiment_id, tags["nvan.ray_run"], params, tags | {
        "nvan.status": "infeasible", "nvan.reason": reason[:5000], "dataset": base.data.dataset,
        "preset": base.model.preset, "protocol": base.eval.protocols[0],
        "device": "cuda" if base.ray.use_gpu else "cpu"}, parent_run_id)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def trial_record_path(root: str, sweep_name: str, trial_id: str) -> str:
    """The run record of one trial: on the storage every node shares (a folder or a URI)."""
    return storage.join(root, sweep_name, "records", f"{trial_id}.json")


def _read_trial_record(path: str) -> dict | None:
    try:
        return read_record(path)
    except UserError:
        return None


def final_report(record: dict, metric: str, fields: dict[str, Any]) -> dict[str, Any]:
    """What Tune is told for a trial whose run record is final (finished before Tune saved it so)."""
    best = record["scores"].get(record["config"]["eval"]["protocols"][0], {})
    return fields | {objective(metric): best.get(metric, math.nan), "epochs": record["epochs"],
                     "best_epoch": record["best_epoch"], "mlflow_run_id": record["run"].get("mlflow_run_id")}


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
        directory = check_inputs(trial)
        cost = (record or {}).get("cost") or run_cost(
            trial, trial.spec(TrainClips(directory, trial.data.frames).num_classes), directory)
    fields = costs | {"label": label, LATENCY: latency_ms(cost)}
    if record is not None and record.get("status") == "finished":
        # It finished before Tune saved it as such (an interrupt between the two): report, do not retrain.
        tune.report(final_report(record, config.sweep.metric, fields))
        return
    # A trial restarted by Tuner.restore continues its Ray Train run (and MLflow run) from the checkpoint;
    # one stopped before its Train run began starts over, without the empty MLflow run it left.
    resume = ray_run if storage.is_dir(storage.join(trial.ray.storage_path, ray_run)) else None
    if resume is None:
        client, experiment_id = connect(trial.mlflow.tracking_uri, trial.mlflow.experiment)
        if orphan := find_run(client, experiment_id, "nvan.ray_run", ray_run):
            client.delete_run(orphan)
    fit(trial, name=ray_run, resume=resume, parent_run_id=parent_run_id, tags=tags, progress=False,
        tune_callbacks=[SweepReport(fields, config.sweep.metric, trial.eval.protocols[0])],
        record_to=record_path, label=label, kind="trial", cost=cost)


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


def search_setup(sweep: SweepConfig, seed: int) -> tuple[Any, dict[str, Any]]:
    """Tune's search algorithm (None: Tune's default variant generator) and parameter space."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    space = sweep.space.searched()
    if sweep.search == "grid":
        return None, {k: tune.grid_search(v) for k, v in space.items()}
    choices = {k: tune.choice(v) for k, v in space.items()}
    if sweep.search == "random":
        return BasicVariantGenerator(random_state=seed), choices
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    # Both samplers start with random points; scale that start to the budget, or small sweeps stay random.
    start = max(2, sweep.num_samples // 4)
    sampler = (optuna.samplers.NSGAIISampler(population_size=min(50, start), seed=seed)
               if sweep.optuna_sampler == "nsga2" else
               optuna.samplers.TPESampler(n_startup_trials=min(10, start), seed=seed))
    return OptunaSearch(metric=[objective(sweep.metric), cost_key(sweep)], mode=["max", "min"],
                        sampler=sampler), choices


def scheduler_for(sweep: SweepConfig, epochs: int):
    """ASHA on the accuracy objective (rungs before the last epoch), or FIFO."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if sweep.scheduler == "fifo":
        return FIFOScheduler()
    # max_t below the last epoch and stop_last_trials=False: ASHA never stops a trial that is
    # finishing (its final report), which would cut off fit's best scores and artifacts.
    return ASHAScheduler(time_attr="epochs", metric=objective(sweep.metric), mode="max", max_t=epochs - 1,
                         grace_period=sweep.grace_period, reduction_factor=sweep.reduction_factor,
                         stop_last_trials=False)


def pareto(frame: pl.DataFrame, accuracy: str, cost: str = COST) -> pl.Series:
    """Boolean flags of the rows not dominated on (max `accuracy`, min `cost`); rows with nulls/NaN are False.

    Sort by cost; a row is on the front when it has the best accuracy of its cost and beats every
    strictly cheaper row. Equal points do not dominate each other, so ties stay on the front.
    """
    valid = pl.col(accuracy).is_not_null() & pl.col(cost).is_not_null() & pl.col(accuracy).is_not_nan() \
        & pl.col(cost).is_not_nan()
    rows = frame.select(acc=pl.col(accuracy), cost=pl.col(cost), valid=valid).with_row_index("row")
    points = rows.filter("valid")
    by_cost = (points.group_by("cost").agg(best=pl.col("acc").max()).sort("cost")
               .with_columns(cheaper=pl.col("best").cum_max().shift(1)))
    beats_cheaper = pl.col("cheaper").is_null() | (pl.col("acc") > pl.col("cheaper"))
    front = points.join(by_cost, on="cost").filter((pl.col("acc") == pl.col("best")) & beats_cheaper)["row"]
    return rows["row"].is_in(front.implode()).alias("pareto")


@dataclass(frozen=True)
class SweepOutcome:
    """A sweep's results table (one row per trial), where it was written, its MLflow parent, completeness."""

    name: str
    results: pl.DataFrame
    path: Path
    parent_run_id: str
    complete: bool
    seconds: float


def _start(config: Config, name: str, resume: bool) -> tuple[Config, str]:
    """The sweep's config and MLflow parent run: new ones, or those saved by the sweep being resumed."""
    base = trial_base(config)  # config errors before anything is created
    folder = storage.join(base.ray.storage_path, name)
    state = storage.join(folder, STATE_FILE)
    if resume:
        if not storage.exists(state):
            raise UserError(f"--resume: no sweep {name!r} at {folder}; check --name and ray.storage_path")
        saved = json.loads(storage.read_text(state))
        # The sweep continues as it started; only where Ray runs may change.
        address = config.ray.address
        config = override(Config.model_validate(saved["config"]), {"ray.address": address}, "--address")
        client, _ = connect(base.mlflow.tracking_uri, base.mlflow.experiment)
        set_tags(client, saved["parent_run_id"], {"nvan.status": "running"})
        return config, saved["parent_run_id"]
    if storage.exists(folder):
        raise UserError(f"sweep {name!r} already exists at {folder}; resume it with --resume --name {name}, "
                        f"or choose another --name")
    client, experiment_id = connect(base.mlflow.tracking_uri, base.mlflow.experiment)
    directory = check_inputs(base)
    manifest = json.loads((directory / "manifest.json").read_text())
    parent = start_run(client, experiment_id, name, flatten(config) | {
        "git_commit": git_commit(), "dataset.manifest_hash": manifest.get("content_hash", "unknown")}, {
        "nvan.kind": "sweep", "nvan.label": name, "nvan.ray_run": name, "nvan.status": "running",
        "dataset": config.data.dataset, "preset": config.model.preset, "protocol": config.eval.protocols[0],
        "device": "cuda" if base.ray.use_gpu else "cpu",
        "dataset.synthetic": str(manifest.get("synthetic", False)).lower()})
    storage.write_text(state, json.dumps({"config": config.model_dump(mode="json"), "parent_run_id": parent}, indent=2))
    return config, parent


def _check_cluster(base: Config, max_concurrent: int) -> None:
    import ray

    check_resources(base)
    have = ray.cluster_resources()
    if have.get("trial_driver", 0) < 1:
        raise UserError(
            "the Ray cluster has no 'trial_driver' resource, which each sweep trial's driver holds; start the "
            f"head with `ray start --head --resources='{{\"trial_driver\": {max_concurrent}}}'` "
            f"(one per concurrent trial)"
        )
    per_trial = base.ray.num_workers * base.ray.cpus_per_worker
    if max_concurrent * per_trial > have.get("CPU", 0):
        log.warning("sweep.max_concurrent = %d trials x %d CPUs (ray.num_workers x ray.cpus_per_worker) exceed the "
                    "cluster's %g CPUs: trials will wait for each other", max_concurrent, per_trial, have.get("CPU", 0))


def run_sweep(config: Config, resume: bool = False) -> SweepOutcome:
    """Run (or resume) the sweep `config.sweep` on Ray Tune; return its results table with Pareto flags."""
    name = config.sweep.name
    if not name:
        if resume:
            raise UserError("--resume needs the sweep's name: pass --name NAME (or set sweep.name)")
        name = f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    start, base = time.perf_counter(), trial_base(config)
    check_inputs(base)  # user errors before Ray starts or anything is recorded
    check_writable(config.report.out_dir / "sweeps" / name / "results.parquet")
    # MLflow and results.parquet are the records; Tune's own CSV/JSON/TensorBoard loggers only
    # duplicate them, and TensorBoard warns on the NaN objective of not yet evaluated epochs.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    with ray_session(config.ray.address, num_cpus=os.cpu_count(), log_to_driver=config.ray.log_to_driver,
                     resources={"trial_driver": config.sweep.max_concurrent}):
        _check_cluster(base, config.sweep.max_concurrent)
        config, parent_run_id = _start(config, name, resume)
        base, sweep = trial_base(config), config.sweep
        experiment = storage.join(base.ray.storage_path, name)
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, base=base.model_dump(mode="json"), sweep_name=name,
                                 parent_run_id=parent_run_id),
            {"cpu": 0, "trial_driver": 1})
        if resume and tune.Tuner.can_restore(experiment):
            tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=True)
        else:
            search_alg, space = search_setup(sweep, config.seed)
            tuner = tune.Tuner(
                trainable, param_space=space,
                tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler_for(sweep, base.train.epochs),
                                            num_samples=sweep.num_samples, max_concurrent_trials=sweep.max_concurrent,
                                            reuse_actors=False),
                run_config=tune.RunConfig(name=name, storage_path=base.ray.storage_path, verbose=0,
                                          callbacks=[TrialEnds(sweep.metric, base.train.epochs, cost_key(sweep))]))
        tuner.fit()
    # The experiment state on disk was written before Tune's cleanup marked interrupted trials TERMINATED.
    trials = tune.ExperimentAnalysis(experiment).trials
    results, complete = close_trials(base, trials, name, parent_run_id)
    # Interrupted before the search created every trial: more to run, whatever the trials say.
    complete &= len(trials) >= expected_trials(sweep)
    path = config.report.out_dir / "sweeps" / name / "results.parquet"
    with atomic_path(path) as tmp:
        results.write_parquet(tmp)
    close_parent(base, parent_run_id, results, path, complete)
    return SweepOutcome(name, results, path, parent_run_id, complete, time.perf_counter() - start)


def trial_outcome(tune_status: str, record: dict | None, infeasible: bool) -> str:
    """A trial's status in the sweep table, from Tune's state of the trial and its own run record.

    The record says how far the trial trained; Tune says why it stopped. A trial whose record
    says finished is finished, whatever Tune saved (an interrupt can fall between the two).
    """
    if infeasible:
        return "infeasible"
    if record is not None and (record.get("status") == "finished"
                               or record["epochs"] >= record["config"]["train"]["epochs"]):
        return "finished"  # every epoch trained, even if the run stopped before its bookkeeping
    if tune_status == "ERROR":
        return "failed"
    if tune_status == "TERMINATED" and record is not None:
        return "early-stopped"  # Tune ended it before its last epoch: ASHA
    return "interrupted"


MLFLOW_END = {"finished": "FINISHED", "early-stopped": "KILLED", "failed": "FAILED", "interrupted": "KILLED"}


def close_trials(base: Config, trials: list, sweep_name: str, parent_run_id: str) -> tuple[pl.DataFrame, bool]:
    """One row per Tune trial, built from the trials' run records; MLflow runs and records closed to match.

    Returns the table and whether the sweep is complete (no trial left to run).
    """
    client, experiment_id = connect(base.mlflow.tracking_uri, base.mlflow.experiment)
    metric, protocol = base.sweep.metric, base.eval.protocols[0]
    _, manifest = prepared_dataset(base)
    rows, complete = [], True
    for trial in sorted(trials, key=lambda t: trial_number(t.experiment_tag)):
        r = trial.last_result or {}
        path = trial_record_path(base.ray.storage_path, sweep_name, trial.trial_id)
        record = _read_trial_record(path)
        candidate, number = resolve(base, trial.config), trial_number(trial.experiment_tag)
        label = (record or {}).get("label") or r.get("label") or f"t{number:03d} {candidate.label(list(trial.config))}"
        # Feasibility is decided here again, not read from Tune: an interrupt can end an infeasible
        # trial before Tune saved its report.
        costs, reason = feasibility(base, candidate, label)
        status = trial_outcome(trial.status, record, reason is not None)
        complete &= status != "interrupted"
        run_id = (record or {}).get("run", {}).get("mlflow_run_id") or r.get("mlflow_run_id") or find_run(
            client, experiment_id, "nvan.trial_id", trial.trial_id)
        if reason is not None and not run_id:
            run_id = record_infeasible(base, candidate, reason, trial_tags(label, sweep_name, trial.trial_id),
                                       parent_run_id)
        best = (record or {}).get("scores", {}).get(protocol, {})
        cost = (record or {}).get("cost") or {}
        if record is not None and record["status"] != status:
            write_record(path, record | {"status": status})
        if run_id and status in MLFLOW_END and client.get_run(run_id).data.tags.get("nvan.status") != status:
            if status in ("early-stopped", "finished"):
                log_metrics(client, run_id, {f"best.{k}": best[k] for k in FINAL_KEYS if k in best}
                            | {"best.epoch": record["best_epoch"]}, step=max(record["epochs"] - 1, 0))
            set_tags(client, run_id, {"nvan.status": status})
            client.set_terminated(run_id, MLFLOW_END[status])
        rows.append({
            "trial": number, "trial_id": trial.trial_id, "label": label, "status": status, **candidate.columns(),
            "map": best.get("map"), "rank1": best.get("rank1"), "best_epoch": (record or {}).get("best_epoch"),
            "epochs": (record or {}).get("epochs", 0), COST: costs.get(COST), "gmacs_input": costs.get("gmacs_input"),
            LATENCY: latency_ms(cost), "gmacs_per_tracklet": cost.get("gmacs_per_tracklet"),
            "latency_device": (cost.get("latency") or {}).get("device"),
            "seconds": r.get("time_total_s"), "mlflow_run_id": run_id, "reason": reason,
            "dataset": base.data.dataset, "synthetic": bool(manifest.get("synthetic", False)),
            "input": f"{candidate.frames}x{base.data.height}x{base.data.width}",
            "git_commit": (record or {}).get("git_commit"),
        })
    frame = pl.DataFrame(rows, schema_overrides={
        "map": pl.Float64, "rank1": pl.Float64, "best_epoch": pl.Int64, COST: pl.Float64, "gmacs_input": pl.Float64,
        LATENCY: pl.Float64, "latency_device": pl.String, "gmacs_per_tracklet": pl.Float64,
        "seconds": pl.Float64, "mlflow_run_id": pl.String, "reason": pl.String, "lr": pl.Float64,
        "git_commit": pl.String})
    frame = frame.with_columns(pl.col("map", "rank1", COST, "gmacs_input", LATENCY).fill_nan(None))
    eligible = frame.with_columns(pl.when(pl.col("status").is_in(["finished", "early-stopped"]))
                                  .then(pl.col(metric)).alias("_acc"))
    frame = frame.with_columns(pareto(eligible, "_acc", cost_key(base.sweep)))
    for row in frame.filter(pl.col("mlflow_run_id").is_not_null()).iter_rows(named=True):
        set_tags(client, row["mlflow_run_id"], {"nvan.pareto": str(row["pareto"]).lower()})
    return frame, complete


# 130 as for a Ctrl-C'd command; 1 when trials failed (a bug or a broken node, not a user error).
EXIT_CODES = {"finished": 0, "failed": 1, "interrupted": 130}


def expected_trials(sweep: SweepConfig) -> int:
    """How many trials the sweep runs in all: num_samples, times the grid's size for a grid search."""
    if sweep.search != "grid":
        return sweep.num_samples
    return sweep.num_samples * math.prod(len(v) for v in sweep.space.searched().values())


def sweep_status(results: pl.DataFrame, complete: bool) -> str:
    """The sweep's own status: interrupted (trials left to run), failed (a trial failed), or finished."""
    if not complete:
        return "interrupted"
    return "failed" if (results["status"] == "failed").any() else "finished"


def close_parent(base: Config, run_id: str, results: pl.DataFrame, path: Path, complete: bool) -> None:
    """Log the sweep's counts and results table to its MLflow run; close it unless interrupted."""
    client, _ = connect(base.mlflow.tracking_uri, base.mlflow.experiment)
    counts = {f"sweep.{s.replace('-', '_')}": results.filter(pl.col("status") == s).height
              for s in ("finished", "early-stopped", "infeasible", "failed", "interrupted")}
    log_metrics(client, run_id, counts | {"sweep.trials": results.height, "sweep.pareto": int(results["pareto"].sum())})
    client.log_artifact(run_id, str(path))
    status = sweep_status(results, complete)
    set_tags(client, run_id, {"nvan.status": status})
    client.set_terminated(run_id, {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}[status])


def format_front(outcome: SweepOutcome, metric: str, protocol: str, cost: str = COST) -> str:
    """The Pareto front as a console table, cheapest first (accuracy in percent; GMACs per clip, latency in ms)."""
    front = outcome.results.filter("pareto").sort(cost)
    counts = outcome.results["status"].value_counts(sort=True)
    lines = [f"sweep {outcome.name}: {outcome.results.height} trials ("
             + ", ".join(f"{n} {s}" for s, n in counts.iter_rows()) + f") in {outcome.seconds:.0f} s; "
             f"results {outcome.path}",
             f"Pareto front: max {metric} ({protocol}, best checkpoint) vs min {COST_LABELS[cost]}",
             f"{'label':<36}{'status':>14}{metric + ' %':>9}{'rank1 %':>9}{'GMACs':>9}{'GMACs@in':>10}{'ms':>9}"
             f"{'epochs':>7}"]
    for row in front.iter_rows(named=True):
        ms = row.get(LATENCY)
        lines.append(f"{row['label']:<36}{row['status']:>14}{100 * row[metric]:9.2f}{100 * row['rank1']:9.2f}"
                     f"{row[COST]:9.3f}{row['gmacs_input']:10.4f}{'-' if ms is None else f'{ms:.1f}':>9}"
                     f"{row['epochs']:7d}")
    if cost == LATENCY and front.height:
        lines.append(f"latency measured on: {', '.join(sorted(set(front['latency_device'].drop_nulls())))}")
    if front.is_empty():
        lines.append("(no trial finished: nothing to compare)")
    failed = outcome.results.filter(pl.col("status") == "failed")
    for row in failed.iter_rows(named=True):
        lines.append(f"FAILED: trial {row['label']} (MLflow run {row['mlflow_run_id']}); its error is in the Ray "
                     f"logs under the sweep's folder")
    if not outcome.complete:
        lines.append(f"interrupted: continue with `python -m harness.sweep --resume --name {outcome.name}`")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = config_parser("Sweep models on Ray Tune: accuracy vs GMACs over non-local placement, reduction, sampling.")
    parser.add_argument("--address", help="Ray cluster to join, e.g. 'auto' (default: ray.address, else a local Ray)")
    parser.add_argument("--name", help="sweep name (default: sweep.name, else sweep-<time>)")
    parser.add_argument("--num-samples", type=int, help="trials (default: sweep.num_samples)")
    parser.add_argument("--max-concurrent", type=int, help="trials at once (default: sweep.max_concurrent)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted sweep --name with its saved config "
                             "(finished trials are not rerun)")
    args = parser.parse_args(argv)
    for key, value in (("ray.address", args.address), ("sweep.name", args.name),
                       ("sweep.num_samples", args.num_samples), ("sweep.max_concurrent", args.max_concurrent)):
        if value is not None:
            args.overrides.append(f"{key}={value}")
    config = load_from_args(args)
    outcome = run_sweep(config, resume=args.resume)
    print(format_front(outcome, config.sweep.metric, config.eval.protocols[0], cost_key(config.sweep)))
    return EXIT_CODES[sweep_status(outcome.results, outcome.complete)]


if __name__ == "__main__":
    # Run the imported module's main so Ray pickles the trainable by reference to
    # harness.sweep, not by value from __main__.
    from harness import sweep

    run(sweep.main)
