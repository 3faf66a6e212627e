"""The one Pareto front of point estimates (harness.evaluate.front), against brute force: the report's groups, the
sweep's missing values, and ties of every kind; and P(on the front) over draws against its pairwise version."""

import warnings

import numpy as np
import polars as pl
import pytest

from harness.evaluate.front import (assess, front_draws, front_probability, interval_lows, pareto_front, sure_front,
                                    surely_on_front)
from harness.evaluate.statistics import FRONT_SCORES, SCORES, Sample, difference, interval


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


def pairwise_front_probability(accuracy: dict[str, np.ndarray], cost: dict[str, float]) -> dict[str, float]:
    """The replaced front_probability, verbatim: every pair in every draw, (draws, points, points) booleans."""
    names = list(accuracy)
    if not names:
        return {}
    acc = np.stack([accuracy[n] for n in names], axis=1)  # (draws, points)
    c = np.array([cost[n] for n in names])
    no_dearer = c[:, None] <= c[None, :]  # [q, p]: q costs no more than p
    cheaper = c[:, None] < c[None, :]
    at_least = acc[:, :, None] >= acc[:, None, :]  # [b, q, p]
    better = acc[:, :, None] > acc[:, None, :]
    dominated = (no_dearer[None] & at_least & (cheaper[None] | better)).any(axis=1)  # [b, p]
    return {n: float(1 - dominated[:, i].mean()) for i, n in enumerate(names)}


def assert_same(got: dict[str, float], expected: dict[str, float]) -> None:
    """Equal keys in the same order and equal values, bit for bit (NaN equal to NaN)."""
    assert list(got) == list(expected)
    assert np.array_equal(np.array(list(got.values())), np.array(list(expected.values())), equal_nan=True), \
        (got, expected)


def random_points(rng: np.random.Generator, points: int, draws: int, nan: float = 0.0,
                  costs: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Accuracies from a few levels (ties within and between draws) and costs from a few values (ties in cost)."""
    levels = np.round(rng.uniform(0, 1, int(rng.integers(1, 6))), 2)
    costs = rng.choice(costs, int(rng.integers(1, len(costs) + 1)), replace=False)
    accuracy, cost = {}, {}
    for i in range(points):
        values = rng.choice(levels, draws)
        values[rng.random(draws) < nan] = np.nan
        accuracy[f"p{i}"] = values
        cost[f"p{i}"] = float(rng.choice(costs))
    return accuracy, cost


def test_front_probability_equals_the_pairwise_one_with_ties():
    rng = np.random.default_rng(2)
    for _ in range(400):
        accuracy, cost = random_points(rng, int(rng.integers(1, 41)), int(rng.integers(1, 60)))
        assert_same(front_probability(accuracy, cost), pairwise_front_probability(accuracy, cost))


def test_front_probability_equals_the_pairwise_one_on_continuous_draws():
    """Few ties: normal draws, float32 among them (compared as given, not cast), distinct and shared costs."""
    rng = np.random.default_rng(3)
    for trial in range(100):
        points, draws = int(rng.integers(1, 41)), int(rng.integers(1, 300))
        dtype = np.float32 if trial % 3 == 0 else np.float64
        accuracy = {f"p{i}": rng.normal(0.5, 0.1, draws).astype(dtype) for i in range(points)}
        cost = {f"p{i}": float(rng.integers(0, max(points // 2, 1))) if trial % 2 else float(rng.normal())
                for i in range(points)}
        assert_same(front_probability(accuracy, cost), pairwise_front_probability(accuracy, cost))


def test_front_probability_equals_the_pairwise_one_across_chunks_of_draws():
    """Enough points x draws that the draws go in several chunks; the pairwise one runs on slices of the draws (its
    memory), their counts of dominated draws summed: exact, as its 1 - mean is 1 - count / draws."""
    rng = np.random.default_rng(5)
    accuracy, cost = random_points(rng, 300, 1100, nan=0.01, costs=tuple(np.arange(40.0)))
    dominated = {n: 0 for n in accuracy}
    for lo in range(0, 1100, 100):
        part = pairwise_front_probability({n: a[lo:lo + 100] for n, a in accuracy.items()}, cost)
        for n, share in part.items():
            dominated[n] += round((1 - share) * 100)
    assert_same(front_probability(accuracy, cost), {n: float(1 - np.float64(k) / 1100) for n, k in dominated.items()})


def test_front_probability_treats_nan_and_infinities_as_the_pairwise_one():
    """A NaN accuracy neither dominates nor is dominated in its draw; a NaN cost in none; infinite values order."""
    rng = np.random.default_rng(4)
    for _ in range(300):
        accuracy, cost = random_points(rng, int(rng.integers(1, 25)), int(rng.integers(1, 30)), nan=0.2,
                                       costs=(0.0, 1.0, 2.5, np.inf, -np.inf, np.nan))
        for values in accuracy.values():
            values[rng.random(values.size) < 0.05] = rng.choice([np.inf, -np.inf])
        assert_same(front_probability(accuracy, cost), pairwise_front_probability(accuracy, cost))
    accuracy = {"nan": np.array([np.nan, 0.5]), "a": np.array([0.6, 0.6]), "free": np.array([0.1, 0.1])}
    cost = {"nan": 1.0, "a": 1.0, "free": np.nan}
    assert front_probability(accuracy, cost) == {"nan": 0.5, "a": 1.0, "free": 1.0}


def test_front_probability_of_one_point_no_points_and_no_draws():
    assert front_probability({}, {}) == {}
    assert front_probability({"a": np.array([0.3, np.nan, 0.1])}, {"a": 2.0}) == {"a": 1.0}
    accuracy, cost = {"a": np.array([0.3])}, {"a": 2.0}
    assert_same(front_probability(accuracy, cost), pairwise_front_probability(accuracy, cost))
    accuracy, cost = {"a": np.zeros(0), "b": np.zeros(0)}, {"a": 1.0, "b": 2.0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the mean of no draws
        assert_same(front_probability(accuracy, cost), pairwise_front_probability(accuracy, cost))


def test_front_probability_refuses_draws_of_different_lengths_as_before():
    accuracy, cost = {"a": np.zeros(3), "b": np.zeros(4)}, {"a": 1.0, "b": 2.0}
    with pytest.raises(ValueError):
        pairwise_front_probability(accuracy, cost)
    with pytest.raises(ValueError):
        front_probability(accuracy, cost)


def looped_surely_on_front(key, samples: dict, cost: dict) -> dict[str, bool]:
    """The replaced surely_on_front, verbatim: a difference against every rival, one at a time."""
    rivals = [k for k, c in cost.items() if k != key and c <= cost[key]] if key in cost else None
    if rivals is None or any(k not in samples for k in rivals):
        return {name: False for name in FRONT_SCORES}  # unplaced, or a rival without per-query values
    index = [SCORES.index(name) for name in FRONT_SCORES]
    sure = np.ones(len(index), dtype=bool)
    for rival in rivals:
        sure &= interval(difference(samples[key], samples[rival]))[0][index] > 0
    return dict(zip(FRONT_SCORES, sure.tolist()))


SEED_LISTS = [(0,), (0, 1), (0, 1, 2), (1, 2, 3), (0, 1, 2, 3)]


def random_samples(rng: np.random.Generator, points: int, queries: int = 30,
                   seed_lists: list | None = None) -> dict[str, Sample]:
    """Samples on one test set: hit-like 0/1 scores and AP-like levels, a few seed lists (paired and unpaired
    differences, one seed among them), near-copies and exact copies of one another (ties in accuracy)."""
    seed_lists = seed_lists or SEED_LISTS
    clusters = rng.integers(0, max(queries // 3, 2), queries)
    out: dict[str, Sample] = {}
    for i in range(points):
        seeds = seed_lists[int(rng.integers(len(seed_lists)))]
        p = rng.uniform(0.2, 0.9)
        values = np.empty((len(seeds), len(SCORES), queries))
        values[:, :3] = rng.random((len(seeds), 3, queries)) < p
        values[:, 3:] = np.round(rng.random((len(seeds), 2, queries)) * p, 1)
        if out and rng.random() < 0.3:  # a copy of an earlier point, perhaps with its seeds, perhaps altered a bit
            earlier = out[f"p{int(rng.integers(len(out)))}"]
            seeds, values = earlier.seeds, earlier.values.copy()
            if rng.random() < 0.5:
                values[..., : queries // 10] = rng.random((len(seeds), len(SCORES), queries // 10)) < 0.95
        out[f"p{i}"] = Sample(tuple(seeds), values, clusters)
    return out


def random_costs(rng: np.random.Generator, samples: dict, extra: int = 0, nan: float = 0.0) -> dict:
    """Costs from a few values (ties), some NaN, and `extra` placed points without samples."""
    levels = rng.choice([0.5, 1.0, 2.0, 3.0, 4.0, 8.0], int(rng.integers(1, 7)), replace=False)
    cost = {k: float(rng.choice(levels)) for k in samples}
    for k in cost:
        if rng.random() < nan:
            cost[k] = np.nan
    for i in range(extra):
        cost[f"missing{i}"] = float(rng.choice(levels))
    return cost


def test_interval_lows_equal_each_difference_interval_value_for_value():
    rng = np.random.default_rng(11)
    for _ in range(30):
        samples = random_samples(rng, int(rng.integers(2, 12)))
        names = list(samples)
        index = sorted(rng.choice(len(SCORES), int(rng.integers(1, len(SCORES) + 1)), replace=False).tolist())
        for key in names[:3]:
            rivals = [samples[k] for k in names if k != key]
            for first in (False, True):
                got = interval_lows(samples[key], rivals, index, rivals_first=first)
                expected = np.array([interval(difference(r, samples[key]) if first else
                                              difference(samples[key], r))[0][index] for r in rivals])
                assert np.array_equal(got, expected, equal_nan=True)


def test_sure_front_equals_the_loop_with_ties_missing_rivals_and_unplaced_points():
    rng = np.random.default_rng(12)
    sure_seen = 0
    for trial in range(120):
        samples = random_samples(rng, int(rng.integers(1, 16)))
        cost = random_costs(rng, samples, extra=int(rng.integers(0, 3)) if trial % 3 == 0 else 0,
                            nan=0.1 if trial % 4 == 0 else 0.0)
        if trial % 5 == 0:
            del cost[next(iter(samples))]  # an unplaced point
        got = sure_front(samples, cost)
        for key in samples:
            expected = looped_surely_on_front(key, samples, cost)
            assert got[key] == expected, (trial, key)
            assert surely_on_front(key, samples, cost) == expected
            sure_seen += sum(expected.values())
        for key in [k for k in cost if k not in samples]:  # placed without values: the loop's verdicts where it has one
            try:
                expected = looped_surely_on_front(key, samples, cost)
            except KeyError:
                with pytest.raises(KeyError):
                    surely_on_front(key, samples, cost)
            else:
                assert surely_on_front(key, samples, cost) == expected
    assert sure_seen > 20  # the cases decide both ways


def test_sure_front_equals_the_loop_across_chunks_of_rivals():
    """Many rivals of few seed lists and one clear leader, so its rivals go in several chunks and groups."""
    rng = np.random.default_rng(13)
    samples = random_samples(rng, 150, queries=60, seed_lists=[(0, 1, 2), (3, 4, 5), (0, 1, 2, 3)])
    samples = {k: Sample(s.seeds, s.values / 2, s.clusters) for k, s in samples.items()}  # all well behind
    leader = np.ones((3, len(SCORES), 60))
    leader[:, :, :3] = 0
    samples["leader"] = Sample((0, 1, 2), leader, samples["p0"].clusters)
    cost = {k: float(rng.integers(0, 5)) for k in samples}
    cost["leader"] = 4.0
    got = sure_front(samples, cost)
    assert got["leader"] == looped_surely_on_front("leader", samples, cost) == {"rank1": True, "map": True}
    for key in samples:
        assert got[key] == looped_surely_on_front(key, samples, cost)


def test_assess_keeps_its_results_with_the_front_scores_alone():
    rng = np.random.default_rng(14)
    samples = random_samples(rng, 12, seed_lists=[(0, 1, 2), (0, 1)])
    cost = random_costs(rng, samples, extra=1)
    cost["p3"] = None
    full = front_draws({k: s for k, s in samples.items() if cost.get(k) is not None}, 300, 5)
    kept = front_draws({k: s for k, s in samples.items() if cost.get(k) is not None}, 300, 5, FRONT_SCORES)
    index = [SCORES.index(name) for name in FRONT_SCORES]
    assert all(np.array_equal(kept[k], full[k][:, index]) for k in full)
    found = assess(samples, cost, draws=300, seed=5)
    placed = {k: c for k, c in cost.items() if c is not None}
    for j, name in enumerate(FRONT_SCORES):
        odds = front_probability({k: r[:, index[j]] for k, r in full.items()}, {k: placed[k] for k in full})
        assert {k: a.p_front[name] for k, a in found.items()} == {k: odds.get(k) for k in samples}
    assert {k: a.sure for k, a in found.items()} == {k: looped_surely_on_front(k, samples, placed) for k in samples}
