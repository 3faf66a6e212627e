"""The one Pareto front of point estimates (harness.evaluate.front), against brute force: the report's groups, the
sweep's missing values, and ties of every kind."""

import numpy as np
import polars as pl

from harness.evaluate.front import pareto_front


def dominated(acc: list[float], cost: list[float], group: list | None = None) -> list[bool]:
    """Brute force: a point is dominated if another of its group is at least as good on both and better on one."""
    group = group or [0] * len(acc)
    points = list(zip(group, acc, cost))
    return [any(g2 == g and a2 >= a and c2 <= c and (a2 > a or c2 < c) for g2, a2, c2 in points)
            for g, a, c in points]


def test_the_front_matches_brute_force_with_ties_and_missing_values():
    """A null cost or a NaN accuracy (a trial that never scored) is off the front and dominates nothing."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 25))
        acc = rng.integers(0, 6, n).astype(float)  # few levels: many ties
        cost = rng.integers(0, 6, n).astype(float)
        acc[rng.random(n) < 0.15] = np.nan
        frame = pl.DataFrame({"acc": acc, "gmacs": cost}).with_columns(
            pl.when(pl.int_range(pl.len()) % 7 == 3).then(None).otherwise(pl.col("gmacs")).alias("gmacs"))
        flags = pareto_front(frame, "acc", "gmacs").to_list()
        valid = [i for i, (a, c) in enumerate(zip(frame["acc"], frame["gmacs"])) if c is not None and not np.isnan(a)]
        beaten = dominated([acc[i] for i in valid], [frame["gmacs"][i] for i in valid])
        expected = [False] * n
        for i, b in zip(valid, beaten):
            expected[i] = not b
        assert flags == expected


def test_the_front_matches_brute_force_within_each_group():
    """The report's front is per dataset group: a point of one group never dominates one of another."""
    rng = np.random.default_rng(1)
    n = 60
    frame = pl.DataFrame({
        "group": rng.choice(["a", "b"], n).tolist(),
        "cost": rng.choice([0.5, 1.0, 2.0, 4.0, 8.0, 16.0], n).tolist(),  # many cost ties
        "rank1": rng.choice([0.2, 0.4, 0.6, 0.8], n).tolist(),  # and exact duplicates
    })
    flags = pareto_front(frame, "rank1", "cost", "group").to_list()
    assert flags == [not d for d in dominated(frame["rank1"].to_list(), frame["cost"].to_list(),
                                              frame["group"].to_list())]
    assert 0 < sum(flags) < n
    ungrouped = pareto_front(frame, "rank1", "cost").to_list()
    assert ungrouped == [not d for d in dominated(frame["rank1"].to_list(), frame["cost"].to_list())]
    pair = pl.DataFrame({"group": ["a", "b"], "cost": [1.0, 2.0], "rank1": [0.5, 0.4]})
    assert pareto_front(pair, "rank1", "cost", "group").to_list() == [True, True]  # each leads its own group
    assert pareto_front(pair, "rank1", "cost").to_list() == [True, False]
