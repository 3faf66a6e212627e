"""A sweep's search: the space, its candidates and their costs, the objectives, Optuna and ASHA."""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Any

import optuna
from ray import tune

from harness import storage
from harness.errors import ConfigError
from harness.config import PAPER_INPUT, Config, InputSize
from harness.sweep_params import TEMPORAL_POOLS, SweepConfig, placement_blocks
from harness.params import dotted, override
from harness.measure.macs import macs_on_meta
from harness.results.tracking import tracking_uri
from models.spec import SpecError

log = logging.getLogger("harness.sweep")


COST = "gmacs"  # GMACs per clip at T x 256 x 128: Tune results and results-table key
LATENCY = "latency_ms"  # measured ms per clip on the trial's device: likewise
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


def trial_base(config: Config) -> Config:
    """The config every trial starts from: sweep.trial applied, paths absolute; ConfigError names the key."""
    base = override(config, dotted(config.sweep.trial), "sweep.trial")
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



def feasibility(base: Config, candidate: Candidate, label: str) -> tuple[dict[str, float], str | None]:
    """The candidate's costs (GMACs) and None, or no costs and why it cannot be trained."""
    try:
        return candidate_costs(override(base, candidate.overrides(), f"candidate {label}")), None
    except (ConfigError, SpecError) as e:
        return {}, str(e)



class PicklableNSGAII(optuna.samplers.NSGAIISampler):
    """NSGA-II that Ray Tune can pickle (tuner.pkl, searcher checkpoints, --resume): Optuna 5.1's genetic samplers
    hold a threading.Lock, so the sweep died in tune.Tuner before its first trial. A lock only guards one
    process's threads, so an unpickled sampler gets a fresh one; Optuna 5.0 has no lock and pickles as it is."""

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if "_thread_lock" in state:
            state["_thread_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "_thread_lock" in state:
            self._thread_lock = threading.Lock()


def search_setup(sweep: SweepConfig, seed: int) -> tuple[Any, dict[str, Any]]:
    """Tune's search algorithm (None: Tune's default variant generator) and parameter space."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    space = sweep.space.searched()
    if sweep.search == "grid":
        return None, {k: tune.grid_search(v) for k, v in space.items()}
    choices = {k: tune.choice(v) for k, v in space.items()}
    if sweep.search == "random":
        return BasicVariantGenerator(random_state=seed), choices
    from ray.tune.search.optuna import OptunaSearch

    # Both samplers start with random points; scale that start to the budget, or small sweeps stay random.
    start = max(2, sweep.num_samples // 4)
    sampler = (PicklableNSGAII(population_size=min(50, start), seed=seed)
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



def expected_trials(sweep: SweepConfig) -> int:
    """How many trials the sweep runs in all: num_samples, times the grid's size for a grid search."""
    if sweep.search != "grid":
        return sweep.num_samples
    return sweep.num_samples * math.prod(len(v) for v in sweep.space.searched().values())
