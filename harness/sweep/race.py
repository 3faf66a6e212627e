"""Racing for seeds (sweep.seeds: adaptive): after the Tune trials, the fully trained candidates train more seeds in
rounds until each is decided on the sweep's metric.

A candidate is "dominated" when one that costs no more is decidedly more accurate (the paired difference's two-sided
95 % interval above 0), "front" when it is surely on the front (`harness.evaluate.front.surely_on_front`), and
otherwise trains one more seed, unless it has max_seeds ("budget"). Racing cuts on evidence, ASHA (inside the
trials) on fidelity. The decisions are a function of the run records, so a resumed sweep replays the rounds and
continues where they stopped, and the results table replays them without training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Callable, Hashable

import numpy as np

from harness import storage
from harness.config import Config
from harness.evaluate.front import interval_lows, nearest_first, sure_front
from harness.evaluate.queries import queries_path
from harness.evaluate.statistics import FRONT_SCORES, SCORES, Sample, read_sample
from harness.sweep.space import COST, cost_key, feasibility, resolve
from harness.sweep.trainable import read_trial_record, trial_config, trial_number, trial_record_path, trial_tags
from harness.train.seeds import SeedSet, fit_seed_sets

log = logging.getLogger("harness.sweep")

DOMINATED, FRONT, BUDGET, FIXED = "dominated", "front", "budget", "fixed"


def decide(samples: dict[Hashable, Sample], cost: dict[Hashable, float], score: str,
           max_seeds: int) -> dict[Hashable, str | None]:
    """Each candidate's verdict at the seeds it has: dominated, front, budget (neither, at max_seeds) or None
    (undecided: one more seed).

    An interval of a difference is centred on the difference of the point estimates, so only a rival with a higher
    estimate can dominate a candidate: those are compared, the most accurate first and stacked
    (`harness.evaluate.front.interval_lows`), until one dominates it."""
    i = SCORES.index(score)
    keys = list(samples)
    costs = np.array([cost[k] for k in keys], dtype=np.float64) if len(keys) > 1 else np.zeros(len(keys))
    points = np.array([samples[k].point()[i] for k in keys], dtype=np.float64)
    dominated = np.zeros(len(keys), dtype=bool)
    for j, key in enumerate(keys):
        rivals = np.flatnonzero((costs <= costs[j]) & (points > points[j]))  # never itself
        rivals = rivals[np.argsort(-points[rivals], kind="stable")]
        for part in nearest_first(rivals):
            if (interval_lows(samples[key], [samples[keys[r]] for r in part], [i], rivals_first=True) > 0).any():
                dominated[j] = True
                break
    rest = [k for k, d in zip(keys, dominated) if not d]
    if rest and score not in FRONT_SCORES:
        raise KeyError(score)  # as surely_on_front's verdicts, which are of FRONT_SCORES only
    sure = sure_front(samples, cost, (score,), rest) if rest else {}
    out = {}
    for key, beaten in zip(keys, dominated):
        if beaten:
            out[key] = DOMINATED
        elif sure[key][score]:
            out[key] = FRONT
        else:
            out[key] = BUDGET if len(samples[key].seeds) >= max_seeds else None
    return out


@dataclass(frozen=True)
class Entrant:
    """A candidate in the race: its cost objective and the record path of each seed index it may train."""

    cost: float
    paths: tuple[str, ...]


def trained(path: str) -> bool:
    """Whether the seed whose record is at `path` trained all its epochs and left its per-query outcomes."""
    record = read_trial_record(path)
    # Every epoch counts, whatever status an interrupt wrote over the record afterwards.
    return (record is not None and (record.status == "finished" or record.epochs >= record.config.train.epochs)
            and storage.exists(queries_path(path)))


def race(entrants: dict[Hashable, Entrant], protocol: str, score: str, min_seeds: int, max_seeds: int,
         train: Callable[[dict[Hashable, int]], None] | None = None) -> dict[Hashable, str]:
    """The verdict of each entrant whose race is decided, round after round from min_seeds: `train` gets the seed
    index each undecided entrant (and each decided rival `keeping_pace` with them) adds, those not trained yet;
    without it the rounds stop at the first seed missing. A verdict, once reached, stays."""
    counts = dict.fromkeys(entrants, min_seeds)
    cost = {k: e.cost for k, e in entrants.items()}
    verdicts: dict[Hashable, str] = {}
    samples: dict[Hashable, Sample] = {}
    while True:
        # The seeds read in an earlier round were checked then: only each entrant's new seed is.
        todo = {k: counts[k] - 1 for k, e in entrants.items()
                if not (k in samples and len(samples[k].seeds) == counts[k]) and not trained(e.paths[counts[k] - 1])}
        if todo and train is not None:
            train(todo)
            todo = {k: i for k, i in todo.items() if not trained(entrants[k].paths[i])}
        if todo:
            return verdicts  # a round not (fully) trained: its entrants stay undecided
        for k, e in entrants.items():
            if k not in samples or len(samples[k].seeds) != counts[k]:
                # Seed k as index k, so candidates pair by seed index.
                samples[k] = read_sample([(i, queries_path(p)) for i, p in enumerate(e.paths[:counts[k]])], protocol)
        for key, verdict in decide(samples, cost, score, max_seeds).items():
            # Racing eliminates: a decided entrant keeps its verdict; it trains on only to pace its undecided rivals.
            if verdict is not None and key not in verdicts:
                verdicts[key] = verdict
        undecided = [k for k in entrants if k not in verdicts]
        if not undecided:
            return verdicts
        pacers = keeping_pace(samples, cost, score, undecided)
        log.info("race: %d candidate(s) undecided, each trains one more seed (and %d decided rival(s) of theirs)",
                 len(undecided), len(pacers))
        for key in (*undecided, *pacers):
            counts[key] += 1


def keeping_pace(samples: dict[Hashable, Sample], cost: dict[Hashable, float], score: str,
                 undecided: list[Hashable]) -> list[Hashable]:
    """The decided candidates that train one more seed beside the undecided ones: each rival that can still decide
    an undecided candidate and would otherwise have fewer seeds than it after this round.

    A decided candidate stops adding seeds, but it stays a rival: compared unpaired at its few seeds, its seed part
    keeps their t (12.7 at two seeds), so a candidate clearly on the front could never be decided against a cheap
    rival stopped at two. The rivals that can still decide X (cost no more): those with a higher estimate (only
    they can dominate X), or when there are none, all of them (X is on the front when it beats each)."""
    i = SCORES.index(score)
    keys = list(samples)
    costs = np.array([cost[k] for k in keys], dtype=np.float64)
    points = np.array([samples[k].point()[i] for k in keys], dtype=np.float64)
    seeds = np.array([len(samples[k].seeds) for k in keys])
    undecided = set(undecided)
    waiting = np.array([k in undecided for k in keys], dtype=bool)
    pace = np.zeros(len(keys), dtype=bool)
    for j in np.flatnonzero(waiting):
        rivals = (costs <= costs[j]) & (np.arange(len(keys)) != j)
        above = rivals & (points > points[j])
        pace |= (above if above.any() else rivals) & (seeds < seeds[j] + 1)
    return [k for k, p, w in zip(keys, pace, waiting) if p and not w]


def entrants(base: Config, trials: list, sweep_name: str) -> dict[str, Entrant]:
    """The trials whose Tune trial trained all its seeds (not infeasible, early-stopped or failed), by trial id, in
    trial order."""
    root, sweep = base.ray.storage_path, base.sweep
    out = {}
    for trial in sorted(trials, key=lambda t: trial_number(t.experiment_tag)):
        paths = tuple(trial_record_path(root, sweep_name, trial.trial_id, i) for i in range(sweep.max_seeds))
        if not all(trained(p) for p in paths[:sweep.min_seeds]):
            continue
        if cost_key(sweep) == COST:
            cost = feasibility(base, resolve(base, trial.config), trial.trial_id)[0].get(COST)
        else:
            latency = read_trial_record(paths[0]).cost.latency
            cost = 1e3 * latency.median_s if latency else None
        if cost is not None:
            out[trial.trial_id] = Entrant(cost, paths)
    return out


def race_trials(base: Config, trials: list, sweep_name: str, parent_run_id: str | None = None) -> dict[str, str]:
    """The race of a sweep's trials: each decided trial's verdict by trial id; with the sweep's MLflow run
    `parent_run_id`, the undecided ones' added seeds train round by round on the connected Ray cluster."""
    sweep = base.sweep
    by_id = {t.trial_id: t for t in trials}
    rounds = partial(train_round, base, by_id, sweep_name, parent_run_id) if parent_run_id else None
    return race(entrants(base, trials, sweep_name), base.eval.primary, sweep.metric, sweep.min_seeds,
                sweep.max_seeds, rounds)


def train_round(base: Config, trials: dict[str, object], sweep_name: str, parent_run_id: str,
                seeds: dict[str, int]) -> None:
    """Train one added seed (by index) of each trial in `seeds`, side by side, through the code `harness.train
    --all-seeds` uses: its record goes where the trial's others are, its MLflow run is a trial run in the sweep's."""
    root = base.ray.storage_path
    sets = []
    for trial_id, index in seeds.items():
        first = read_trial_record(trial_record_path(root, sweep_name, trial_id))
        config = trial_config(base, resolve(base, trials[trial_id].config), sweep_name, first.label)
        # Run names as the trial names its seeds (<sweep>-<trial id>-seed<k>), so a resumed round continues them;
        # the cost is the trial's, as written into its every seed's record.
        sets.append(SeedSet(config, [base.seed + index], f"{sweep_name}-{trial_id}",
                            partial(_seed_path, root, sweep_name, trial_id, base.seed), cost=first.written()["cost"],
                            parent_run_id=parent_run_id, tags=trial_tags(first.label, sweep_name, trial_id),
                            label=first.label, kind="trial"))
    fit_seed_sets(sets, resume=True, name=sweep_name)


def _seed_path(root: str, sweep_name: str, trial_id: str, first_seed: int, seed: int) -> str:
    """The record path of a trial's seed `seed` (its index is seed - first_seed)."""
    return trial_record_path(root, sweep_name, trial_id, seed - first_seed)
