"""Tune and Train callbacks of a sweep: epoch reports with the objectives, a console line per ended trial."""

from __future__ import annotations

import math
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from harness.sweep.space import COST, objective


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
