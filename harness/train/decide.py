"""Train two configurations until their difference is decided: seeds in rounds, a group-sequential test after each.

Both arms train seeds 0, 1, ... side by side in one Ray session (the --all-seeds scheduler), round after
round, and after each round the paired difference of the primary score is tested at the level the
Lan-DeMets O'Brien-Fleming spending gives that look (harness.evaluate.sequential), so repeated looks keep
the false-decision rate at 5 %. It stops at the first of: decided, futile (not even the maximum seeds
would decide a difference the size of the observed one), or the budget spent. The verdict is a
function of the records on disk, so a stopped run resumes exactly: finished seeds are kept, stopped
ones continue from their checkpoints, and the looks are recomputed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from harness.config import Config
from harness.evaluate.queries import queries_path
from harness.evaluate.sequential import Look, Plan, look
from harness.evaluate.statistics import SCORES, difference, read_sample
from harness.params import override
from harness.prepared import PreparedDataset
from harness.results.decisions import DECISION_FILE, SAID, Decision, write_decision
from harness.results.records import read_record
from harness.train.seeds import SeedSet, fit_seed_sets, seed_record

log = logging.getLogger("harness.train")


@dataclass(frozen=True)
class Arms:
    """The two configurations compared (A - B), where their records go, and the run name of each arm's seed set."""

    a: Config
    b: Config
    out: Path
    name: str
    prepared: PreparedDataset | None = None  # the inputs both arms share, checked

    def seed_set(self, arm: Config, seeds: list[int]) -> SeedSet:
        """The seed set that trains `arm` at `seeds`, its records in out/<preset>/."""
        preset = arm.model.preset
        return SeedSet(override(arm, {"seeds": seeds}, "seeds"), seeds, f"{self.name}-{preset}",
                       partial(seed_record, self.out / preset), prepared=self.prepared)


def arm_configs(config: Config, against: str) -> tuple[Config, Config]:
    """Arm A (the configured preset) and arm B (`against`), otherwise the same params."""
    return config, override(config, {"model": {"preset": against}}, "--against")


def until_decided(arms: Arms, plan: Plan, score: str, resume: bool) -> Decision:
    """Train rounds of seeds until the paired difference of `score` is decided, futile or out of budget; the
    decision record (also written to out/decision.json after every round)."""
    looks: list[dict] = []
    seeds, before = plan.first, 0
    while True:
        started = time.perf_counter()
        trained = fit_seed_sets([arms.seed_set(arm, list(range(seeds))) for arm in (arms.a, arms.b)],
                                resume or looks != [], arms.name)
        outcome = look(plan, _difference(arms, seeds), SCORES.index(score))
        looks.append(_look_entry(outcome, score, arms, range(before, seeds), sum(map(len, trained)),
                                 time.perf_counter() - started))
        decision = _decision(arms, plan, score, looks)
        write_decision(arms.out / DECISION_FILE, decision)
        log.info("look at %d seeds: %s (%s %+.2f points, [%.2f, %.2f] at level %.4f)", seeds, outcome.verdict, score,
                 looks[-1]["diff"], looks[-1]["lo"], looks[-1]["hi"], outcome.level)
        if outcome.verdict != "continue":
            return Decision.model_validate(decision)
        seeds, before = min(seeds + plan.step, plan.max_seeds), seeds


def _records(arms: Arms, arm: Config, seeds: range) -> list:
    return [read_record(seed_record(arms.out / arm.model.preset, seed)) for seed in seeds]


def _difference(arms: Arms, seeds: int):
    """The paired difference A - B of every score over seeds 0 .. seeds-1 on the primary protocol (an Estimate)."""
    samples = []
    for arm in (arms.a, arms.b):
        runs = [(seed, queries_path(seed_record(arms.out / arm.model.preset, seed))) for seed in range(seeds)]
        samples.append(read_sample(runs, arm.eval.primary, arm.model.preset))
    return difference(*samples)


def _look_entry(outcome: Look, score: str, arms: Arms, added: range, trained: int, wall_s: float) -> dict:
    """One look of the decision record: its seeds, verdict, nominal level, the difference and its repeated
    confidence interval (points of percent), the runs this call trained for it (0 when a resume replays the look),
    the round's wall time and the mean start-up to the first step of the seeds it added (s)."""
    startup = [r.run.startup_s for arm in (arms.a, arms.b) for r in _records(arms, arm, added)
               if r.run.startup_s is not None]
    index = SCORES.index(score)
    return {"seeds": added.stop, "verdict": outcome.verdict, "level": float(outcome.level),
            "diff": round(100 * float(outcome.point[index]), 2), "lo": round(100 * float(outcome.low[index]), 2),
            "hi": round(100 * float(outcome.high[index]), 2), "trained": trained, "round_s": round(wall_s, 1),
            "startup_s": round(sum(startup) / len(startup), 1) if startup else None}


def _decision(arms: Arms, plan: Plan, score: str, looks: list[dict]) -> dict:
    """The decision record so far: plan, looks, verdict, the seeds used and the compute they cost."""
    seeds = looks[-1]["seeds"]
    runs = [r for arm in (arms.a, arms.b) for r in _records(arms, arm, range(seeds))]
    seconds = sum(r.run.seconds or 0.0 for r in runs)
    gpu = any(r.run.gpu for r in runs)
    # Device-hours: per worker its GPUs on a GPU, else its CPU threads.
    devices = [(r.run.workers or 1) * ((r.config.ray.gpus_per_worker if r.config.ray else 1.0) if gpu
                                       else r.run.threads_per_worker or 1) for r in runs]
    device_hours = sum((r.run.seconds or 0.0) * d for r, d in zip(runs, devices)) / 3600
    return {
        "a": arms.a.model.preset, "b": arms.b.model.preset, "score": score,
        "protocol": arms.a.eval.primary, "name": arms.name,
        "plan": {"first": plan.first, "max_seeds": plan.max_seeds, "step": plan.step, "alpha": plan.alpha,
                 "spending": "Lan-DeMets O'Brien-Fleming"},
        "verdict": looks[-1]["verdict"], "seeds": seeds, "looks": looks,
        "compute": {"train_s": round(seconds, 1), ("gpu_hours" if gpu else "core_hours"): round(device_hours, 3),
                    "device": runs[0].hardware if runs else None},
    }


def format_decision(decision: Decision) -> str:
    """The console line of a decision: the verdict at its seeds, A - B with its repeated confidence interval, and
    the compute spent."""
    last, (unit, hours) = decision.looks[-1], decision.device_hours
    return (f"{decision.a} - {decision.b}, {decision.score} ({decision.protocol}): {SAID[last.verdict]} at "
            f"{last.seeds} of at most {decision.plan.max_seeds} seeds per arm; {last.diff:+.2f} points, repeated "
            f"{100 * (1 - decision.plan.alpha):.0f} % interval [{last.lo:.2f}, {last.hi:.2f}] (nominal level "
            f"{last.level:.4f} at this look); {len(decision.looks)} look(s), {decision.compute.train_s / 3600:.2f} h "
            f"of training ({hours:.2f} {unit.replace('_', '-')} on {decision.compute.device})")
