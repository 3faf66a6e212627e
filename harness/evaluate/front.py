"""The Pareto front (max accuracy, min cost), for the report and the sweep alike: the front of the point estimates,
and under uncertainty each point's P(on the front), from draws of each point's approximate sampling distribution
(`front_draws`, correlated between points as their data are), and whether it is surely on it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable

import numpy as np
import polars as pl

from harness.evaluate.statistics import (DEFAULT_DRAWS, FRONT_SCORES, SCORES, Sample, from_cluster_sums, half_width,
                                         point_interval, same_test_set, unpaired)


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


def front_draws(samples: dict[Hashable, Sample], draws: int = DEFAULT_DRAWS, seed: int = 0,
                scores: tuple[str, ...] = SCORES) -> dict[Hashable, np.ndarray]:
    """(draws, len(scores)) per point from its approximate sampling distribution: point + SE_s x a t_{R-1} draw shared
    by points with the same seed list + a wild cluster term shared by all (normal weight per identity and draw).
    `scores` picks the columns kept (the draws of every score are computed, so each column is the same whichever
    are kept): at 10,000 points x 2,000 draws each score is 160 MB."""
    columns = None if tuple(scores) == SCORES else [SCORES.index(name) for name in scores]
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
        found = (est.point + _seed_draw(sample.seeds, draws, seed)[:, None] * np.sqrt(est.seed_part)
                 + weights @ centred.T)
        out[key] = found if columns is None else found[:, columns]
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


_CHUNK_VALUES = 2**21  # float64 cluster sums per stacked chunk of rivals (16 MB): an estimate's temporaries are a few
# arrays of that size, so a chunk stays near 100 MB whatever the number of rivals


def interval_lows(sample: Sample, rivals: list[Sample], index: list[int], rivals_first: bool = False) -> np.ndarray:
    """(len(rivals), len(index)): for each rival, the low end of the 95 % interval of `difference(sample, rival)` (of
    `difference(rival, sample)` with `rivals_first`) on the scores `index`, value for value as `interval` gives it.

    The rivals of one seed list go through one estimate on their stacked cluster sums (N, scores, R, G), paired when
    the list is the sample's, in chunks of bounded memory: every step of the estimate is elementwise over the leading
    axes, or a reduction over seeds or identities, so each rival's values are those of its own `difference`."""
    out = np.empty((len(rivals), len(index)))
    if not rivals:
        return out
    same_test_set([sample, *rivals])
    own, sizes = sample.sums
    own, own_point = own[index], sample.point()[index]
    step = max(1, _CHUNK_VALUES // (max(len(r.seeds) for r in rivals) * max(len(index), 1) * sizes.size))
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, rival in enumerate(rivals):
        groups.setdefault(rival.seeds, []).append(i)
    for seeds, members in groups.items():
        for lo in range(0, len(members), step):
            part = members[lo:lo + step]
            other = np.stack([rivals[i].sums[0][index] for i in part])  # (n, scores, R, G)
            points = np.stack([rivals[i].point()[index] for i in part])
            a, b = (other, own) if rivals_first else (own, other)
            est = from_cluster_sums(a - b, sizes) if seeds == sample.seeds else unpaired(a, b, sizes)
            out[part] = (points - own_point if rivals_first else own_point - points) - half_width(est)
    return out


def nearest_first(items: np.ndarray):
    """`items` in chunks of 8, 32, 128, ...: an early exit usually comes in the first, the closest rivals."""
    lo, size = 0, 8
    while lo < len(items):
        yield items[lo:lo + size]
        lo, size = lo + size, size * 4


def sure_front(samples: dict[Hashable, Sample], cost: dict[Hashable, float], scores: tuple[str, ...] = FRONT_SCORES,
               keys: list[Hashable] | None = None) -> dict[Hashable, dict[str, bool]]:
    """`surely_on_front` of each of `keys` (default: every sample), for `scores`, at once.

    The interval of a difference is centred on the difference of the point estimates, so a point can be surely on
    the front of a score only when its estimate is above every rival's (every other placed point that costs no
    more): the others are not compared at all, found from the points sorted by cost. The rest are compared with
    their rivals, the most accurate first, stacked (`interval_lows`), until one rival's interval reaches 0."""
    keys = list(samples) if keys is None else list(keys)
    index = [SCORES.index(name) for name in scores]
    names = list(cost)
    c = np.array([cost[k] for k in names], dtype=np.float64)
    every = np.sort(c[c == c])
    missing = np.sort(np.array([cost[k] for k in names if k not in samples], dtype=np.float64))  # NaN last
    sampled = np.array([i for i, k in enumerate(names) if k in samples and c[i] == c[i]], dtype=np.int64)
    order = sampled[np.argsort(c[sampled], kind="stable")]
    by_cost = c[order]
    points = (np.stack([samples[names[i]].point()[index] for i in order]) if order.size
              else np.empty((0, len(index))))
    best_before = np.maximum.accumulate(points, axis=0)  # NaN carries on: a NaN rival leaves no point sure
    out = {}
    for key in keys:
        if key not in cost:
            out[key] = dict.fromkeys(scores, False)  # unplaced
            continue
        own_cost = float(cost[key])
        if own_cost != own_cost or np.searchsorted(every, own_cost, "right") <= 1:
            out[key] = dict.fromkeys(scores, True)  # no rivals (a NaN cost has none)
            continue
        if np.searchsorted(missing, own_cost, "right") - (key not in samples) > 0:
            out[key] = dict.fromkeys(scores, False)  # a rival without per-query values
            continue
        sample = samples[key]
        lo, hi = np.searchsorted(by_cost, own_cost, "left"), np.searchsorted(by_cost, own_cost, "right")
        own = sample.point()[index]
        sure = own >= np.fmax.reduce(points[lo:hi], axis=0)  # the best of its cost (ties are decided below)
        if lo:
            sure &= own > best_before[lo - 1]  # and better than every cheaper point
        if sure.any():
            rivals = np.array([i for i in range(hi) if names[order[i]] != key], dtype=np.int64)
            rivals = rivals[np.argsort(-points[rivals][:, sure].max(axis=1), kind="stable")]
            for part in nearest_first(rivals):
                live = np.flatnonzero(sure)
                low = interval_lows(sample, [samples[names[order[i]]] for i in part], [index[j] for j in live])
                sure[live] &= (low > 0).all(axis=0)
                if not sure.any():
                    break
        out[key] = dict(zip(scores, sure.tolist()))
    return out


def surely_on_front(key: Hashable, samples: dict[Hashable, Sample], cost: dict[Hashable, float]) -> dict[str, bool]:
    """Per FRONT_SCORES: whether `key` beats every other placed point that costs no more, each paired difference's
    two-sided 95 % interval above 0 (so it is on the front of the point estimates too); `sure_front` for many."""
    return sure_front(samples, cost, FRONT_SCORES, [key])[key]


def assess(samples: dict[Hashable, Sample], cost: dict[Hashable, float], draws: int = DEFAULT_DRAWS,
           seed: int = 0) -> dict[Hashable, Assessment]:
    """Intervals, P(on the front) and sure-front of the points of one test set: the one entry of the report and
    the sweep. `samples` holds the points with per-query values; `cost` every point that can be placed (a cost and
    accuracy), with or without values: one without values that costs no more leaves no point sure."""
    placed = {k: c for k, c in cost.items() if c is not None and not np.isnan(c)}
    reps = front_draws({k: s for k, s in samples.items() if k in placed}, draws, seed, FRONT_SCORES)
    odds = {name: front_probability({k: r[:, j] for k, r in reps.items()}, {k: placed[k] for k in reps})
            for j, name in enumerate(FRONT_SCORES)}
    del reps
    sure = sure_front(samples, placed)
    out = {}
    for key, sample in samples.items():
        low, high = point_interval(sample.estimate)
        out[key] = Assessment(low, high, {name: odds[name].get(key) for name in FRONT_SCORES}, sure[key])
    return out
