"""The Pareto front (max accuracy, min cost), for the report and the sweep alike: the front of the point estimates,
and under uncertainty each point's P(on the front), from draws of each point's approximate sampling distribution
(`front_draws`, correlated between points as their data are), and whether it is surely on it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable

import numpy as np
import polars as pl

from harness.evaluate.statistics import (DEFAULT_DRAWS, FRONT_SCORES, SCORES, Sample, difference, interval,
                                         point_interval, same_test_set)


def pareto_front(frame: pl.DataFrame, accuracy: str, cost: str, group: str | None = None) -> pl.Series:
    """Boolean flags, in row order, of the rows no other row of their `group` dominates on (max `accuracy`, min
    `cost`); a row with a null or NaN in either is False.

    Sorted by cost, a row is on the front when it has the best accuracy of its cost and beats every strictly cheaper
    row. Equal points do not dominate each other, so exact ties are all on the front.
    """
    values = frame.select(grp=pl.col(group) if group else pl.lit(0), acc=pl.col(accuracy).cast(pl.Float64),
                          cost=pl.col(cost).cast(pl.Float64)).with_row_index("row")
    points = values.filter(pl.col("acc").is_not_null() & pl.col("cost").is_not_null() & pl.col("acc").is_not_nan()
                           & pl.col("cost").is_not_nan())
    by_cost = (points.group_by("grp", "cost").agg(best=pl.col("acc").max()).sort("grp", "cost")
               .with_columns(cheaper=pl.col("best").cum_max().shift(1).over("grp")))
    beats_cheaper = pl.col("cheaper").is_null() | (pl.col("acc") > pl.col("cheaper"))
    front = points.join(by_cost, on=["grp", "cost"]).filter((pl.col("acc") == pl.col("best")) & beats_cheaper)["row"]
    return values["row"].is_in(front.implode()).alias("pareto")


def _seed_draw(seeds: tuple[int, ...], draws: int, seed: int) -> np.ndarray:
    """(draws,) standard t_{R-1} draws, the same for every point with this seed list; zeros for one seed."""
    if len(seeds) < 2:
        return np.zeros(draws)
    return np.random.default_rng([seed, 1, len(seeds), *(s % 2**32 for s in seeds)]).standard_t(len(seeds) - 1, draws)


def front_draws(samples: dict[Hashable, Sample], draws: int = DEFAULT_DRAWS,
                seed: int = 0) -> dict[Hashable, np.ndarray]:
    """(draws, SCORES) per point from its approximate sampling distribution: point + SE_s x a t_{R-1} draw shared by
    points with the same seed list + a wild cluster term shared by all (normal weight per identity and draw)."""
    if not samples:
        return {}
    same_test_set(list(samples.values()))
    sizes = next(iter(samples.values())).sums[1]
    groups, queries = sizes.size, int(sizes.sum())
    weights = np.random.default_rng([seed, 0]).standard_normal((draws, groups))
    weights *= np.sqrt(groups / max(groups - 1, 1)) / queries
    out = {}
    for key, sample in samples.items():
        est = sample.estimate
        # e_{p,g}, scaled so the term's variance is the query part: its seed x query noise is in the seed part.
        total = est.query_part + est.query_noise
        shrink = np.sqrt(np.divide(est.query_part, total, out=np.zeros_like(total), where=total > 0))
        centred = (sample.sums[0].mean(axis=1) - sizes * est.point[:, None]) * shrink[:, None]  # (SCORES, G)
        out[key] = (est.point + _seed_draw(sample.seeds, draws, seed)[:, None] * np.sqrt(est.seed_part)
                    + weights @ centred.T)
    return out


def front_probability(accuracy: dict[str, np.ndarray], cost: dict[str, float]) -> dict[str, float]:
    """For each point, the share of draws in which no other point dominates it (max accuracy, min cost).

    `accuracy` holds each point's draws of one score (draws,), from one `front_draws` call; a point
    dominates another when it costs no more, is no less accurate, and is strictly better in one of the two.
    """
    names = list(accuracy)
    if not names:
        return {}
    c = np.array([cost[n] for n in names])
    # Costs are the same in every draw, so the points are sorted by cost once; then only a point of its own cost or
    # one before it can dominate a point p: p is dominated iff (a) a strictly cheaper point is at least as accurate,
    # i.e. p's accuracy <= the running max of the accuracies of the cost groups before p's, or (b) a point of p's
    # cost is strictly more accurate, i.e. p's accuracy < its group's max. The running max through p's group is the
    # larger of those two maxima, and (a)'s "<=" covers "<", so: accuracy < running max through p's group, or
    # accuracy <= running max before it. That is O(draws x points), not the pairwise O(draws x points^2).
    # The comparisons are on the given values (no casts), exact as pairwise ones. NaN as pairwise, where it compares
    # False: a NaN accuracy neither dominates (fmax skips it) nor is dominated in that draw; a point of NaN cost
    # does neither in any draw, so it stays out of the scan (sorted last).
    placed = np.flatnonzero(c == c)
    m = placed.size
    order = np.concatenate([placed[np.argsort(c[placed], kind="stable")], np.flatnonzero(c != c)])
    acc = np.stack([accuracy[names[i]] for i in order])  # (points, draws) by cost: the one full-size copy
    draws = acc.shape[1]
    sorted_cost = c[order[:m]]
    new_group = np.ones(m, dtype=bool)
    new_group[1:] = sorted_cost[1:] != sorted_cost[:-1]
    group = np.cumsum(new_group) - 1
    starts = np.flatnonzero(new_group)
    own_end = (np.r_[starts[1:], m] - 1)[group]  # per sorted point: the last index of its cost group
    later = starts[1] if starts.size > 1 else m  # the sorted points from here on have cheaper points before them,
    before_end = starts[group[later:]] - 1  # the last of which is here
    dominated = np.zeros(len(names), dtype=np.int64)  # per sorted point: the draws in which it is dominated
    step = max(1, 2**18 // max(m, 1))  # draws per chunk: the temporaries, a few of (m, step), stay small
    for lo in range(0, draws, step):
        chunk = acc[:m, lo:lo + step]
        running = np.fmax.accumulate(chunk, axis=0)  # fmax: a NaN is never the max unless all are NaN
        beaten = chunk < running.take(own_end, axis=0)
        beaten[later:] |= chunk[later:] <= running.take(before_end, axis=0)
        dominated[:m] += np.count_nonzero(beaten, axis=1)
    share = np.empty(len(names))
    share[order] = 1 - dominated / draws  # as the pairwise 1 - mean, bit for bit (NaN with no draws)
    return {n: float(share[i]) for i, n in enumerate(names)}


@dataclass(frozen=True)
class Assessment:
    """One point's 95 % interval of every score (fractions) and, per FRONT_SCORES, its P(on the front) (None when it
    cannot be placed) and whether it is surely on the front."""

    lo: np.ndarray
    hi: np.ndarray
    p_front: dict[str, float | None]
    sure: dict[str, bool]


def surely_on_front(key: Hashable, samples: dict[Hashable, Sample], cost: dict[Hashable, float]) -> dict[str, bool]:
    """Per FRONT_SCORES: whether `key` beats every other placed point that costs no more, each paired difference's
    two-sided 95 % interval above 0 (so it is on the front of the point estimates too)."""
    rivals = [k for k, c in cost.items() if k != key and c <= cost[key]] if key in cost else None
    if rivals is None or any(k not in samples for k in rivals):
        return {name: False for name in FRONT_SCORES}  # unplaced, or a rival without per-query values
    index = [SCORES.index(name) for name in FRONT_SCORES]
    sure = np.ones(len(index), dtype=bool)
    for rival in rivals:
        sure &= interval(difference(samples[key], samples[rival]))[0][index] > 0
    return dict(zip(FRONT_SCORES, sure.tolist()))


def assess(samples: dict[Hashable, Sample], cost: dict[Hashable, float], draws: int = DEFAULT_DRAWS,
           seed: int = 0) -> dict[Hashable, Assessment]:
    """Intervals, P(on the front) and sure-front of the points of one test set: the one entry of the report and
    the sweep. `samples` holds the points with per-query values; `cost` every point that can be placed (a cost and
    accuracy), with or without values: one without values that costs no more leaves no point sure."""
    placed = {k: c for k, c in cost.items() if c is not None and not np.isnan(c)}
    reps = front_draws({k: s for k, s in samples.items() if k in placed}, draws, seed)
    odds = {name: front_probability({k: r[:, SCORES.index(name)] for k, r in reps.items()},
                                    {k: placed[k] for k in reps}) for name in FRONT_SCORES}
    out = {}
    for key, sample in samples.items():
        low, high = point_interval(sample.estimate)
        out[key] = Assessment(low, high, {name: odds[name].get(key) for name in FRONT_SCORES},
                              surely_on_front(key, samples, placed))
    return out
