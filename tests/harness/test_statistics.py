"""harness.evaluate.statistics against independent computations: plain numpy resampling, the binomial interval,
paired against unpaired differences, and the Pareto front's odds in cases worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from harness.evaluate.metrics import QueryOutcomes
from harness.evaluate.statistics import (SCORES, Sample, compare, front_probability, interval, query_interval,
                                         query_values, replicates)


def outcomes(first: np.ndarray, ap: np.ndarray) -> QueryOutcomes:
    """Outcomes with one good match per query at rank `first` (so last = first, INP = 1 / first)."""
    return QueryOutcomes(first.astype(np.int64), first.astype(np.int64), np.ones(len(first), np.int64), ap)


def run_values(rng: np.random.Generator, n: int, p_hit: float) -> np.ndarray:
    first = np.where(rng.random(n) < p_hit, 1, rng.integers(2, 40, n))
    return query_values(outcomes(first, 1.0 / first))


def test_query_values_are_the_per_query_terms_of_each_score():
    found = outcomes(np.array([1, 3, 7, 12]), np.array([1.0, 0.4, 0.2, 0.1]))
    values = query_values(found)
    assert values.shape == (len(SCORES), 4)
    assert values[SCORES.index("rank1")].tolist() == [1, 0, 0, 0]
    assert values[SCORES.index("rank5")].tolist() == [1, 1, 0, 0]
    assert values[SCORES.index("rank10")].tolist() == [1, 1, 1, 0]
    assert values[SCORES.index("map")].tolist() == [1.0, 0.4, 0.2, 0.1]
    assert values[SCORES.index("minp")].tolist() == [1, 1 / 3, 1 / 7, 1 / 12]
    missing = QueryOutcomes(np.array([2, 0]), np.array([2, 0]), np.array([1, 0]), np.array([0.5, np.nan]))
    assert query_values(missing).shape == (len(SCORES), 1)  # a query without a good match counts in no score


def test_query_interval_is_the_percentile_bootstrap_with_the_same_indices():
    values = run_values(np.random.default_rng(0), 300, 0.3)
    found = query_interval(values, resamples=2000, seed=5)
    # Plain numpy: the same resampled indices (one draw of resamples x n from the seeded generator), the mean of
    # each resample, the 2.5th and 97.5th percentiles.
    index = np.random.default_rng(5).integers(0, values.shape[1], (2000, values.shape[1]))
    means = values[:, index].mean(axis=-1)
    low, high = np.percentile(means, [2.5, 97.5], axis=-1)
    for i, name in enumerate(SCORES):
        assert found[name] == pytest.approx([low[i], high[i]], abs=1e-12)


def test_rank1_interval_at_large_n_is_the_binomial_one():
    n, p = 20000, 0.3
    values = run_values(np.random.default_rng(1), n, p)
    hit = values[SCORES.index("rank1")].mean()
    half = 1.959964 * np.sqrt(hit * (1 - hit) / n)
    low, high = query_interval(values, resamples=4000, seed=2)["rank1"]
    assert abs((high - low) - 2 * half) < 0.1 * 2 * half
    assert abs((low + high) / 2 - hit) < 0.1 * half


def test_two_way_interval_counts_seed_variation_too():
    rng = np.random.default_rng(3)
    base = run_values(rng, 500, 0.3)
    # Four seeds that agree query by query but one (seed 3) that moved every score: the seed draw widens the interval.
    shifted = np.stack([base, base, base, np.clip(base + 0.2, 0, 1)])
    calm = np.stack([base, base, base, base])
    wide, narrow = (interval(replicates({"x": Sample((0, 1, 2, 3), v)}, seed=0)["x"]) for v in (shifted, calm))
    r1 = SCORES.index("rank1")
    assert wide[1][r1] - wide[0][r1] > 1.5 * (narrow[1][r1] - narrow[0][r1])
    # One seed: the two-way bootstrap is the query bootstrap (same spread up to Monte Carlo error).
    single = interval(replicates({"x": Sample((0,), base[None])}, resamples=4000, seed=0)["x"])
    scipy = query_interval(base, resamples=4000, seed=0)["rank1"]
    assert single[1][r1] - single[0][r1] == pytest.approx(scipy[1] - scipy[0], rel=0.1)


def test_sample_point_and_seed_std():
    values = np.stack([run_values(np.random.default_rng(s), 200, 0.2 + 0.1 * s) for s in range(3)])
    sample = Sample((0, 1, 2), values)
    assert sample.point() == pytest.approx(values.mean(axis=2).mean(axis=0), abs=1e-15)
    assert sample.seed_std() == pytest.approx(values.mean(axis=2).std(axis=0, ddof=1))
    assert np.isnan(Sample((0,), values[:1]).seed_std()).all()


def test_paired_difference_is_narrower_than_unpaired_for_correlated_runs():
    rng = np.random.default_rng(4)
    a = run_values(rng, 800, 0.4)
    b = a.copy()
    flip = rng.random(800) < 0.05  # B differs from A on 5 % of the queries only
    b[:, flip] = run_values(rng, int(flip.sum()), 0.4)
    a_s, b_s = Sample((0,), a[None]), Sample((0,), b[None])
    paired = replicates({"a": a_s, "b": b_s}, seed=0)
    unpaired = replicates({"a": a_s}, seed=1)["a"] - replicates({"b": b_s}, seed=2)["b"]
    found = compare(paired["a"], paired["b"], a_s.point(), b_s.point())
    low, high = interval(unpaired)
    r1 = SCORES.index("rank1")
    assert found["rank1"]["hi"] - found["rank1"]["lo"] < 0.5 * (high[r1] - low[r1])
    assert found["rank1"]["diff"] == pytest.approx(a[r1].mean() - b[r1].mean())


def test_identical_runs_differ_by_exactly_nothing():
    a = run_values(np.random.default_rng(5), 300, 0.3)
    s = Sample((0, 1), np.stack([a, a]))
    reps = replicates({"a": s, "b": Sample((0, 1), np.stack([a, a]))}, seed=0)
    found = compare(reps["a"], reps["b"], s.point(), s.point())
    for name in SCORES:
        assert found[name]["diff"] == 0 and found[name]["lo"] == 0 and found[name]["hi"] == 0
        assert (found[name]["p_a"], found[name]["p_tie"], found[name]["p_b"]) == (0, 1, 0)
        assert not found[name]["decided"]


def test_a_far_better_difference_is_decided():
    rng = np.random.default_rng(6)
    good, poor = Sample((0,), run_values(rng, 600, 0.6)[None]), Sample((0,), run_values(rng, 600, 0.2)[None])
    reps = replicates({"good": good, "poor": poor}, seed=0)
    found = compare(reps["good"], reps["poor"], good.point(), poor.point())["rank1"]
    assert found["decided"] and found["lo"] > 0 and found["p_a"] == 1


def test_front_probability_by_hand():
    rng = np.random.default_rng(7)
    base = run_values(rng, 1000, 0.3)
    # Exchangeable: the same outcome distribution, resampled in each other's place; equal cost.
    twin = base[:, rng.permutation(1000)]
    best = np.clip(base + 0.5, 0, 1)  # better than both on every query, and cheaper
    samples = {"a": Sample((0,), base[None]), "b": Sample((0,), twin[None]), "best": Sample((0,), best[None])}
    reps = replicates(samples, seed=0)
    m = SCORES.index("map")  # continuous per-query values: ties between a and b have probability ~0
    odds = front_probability({k: r[:, m] for k, r in reps.items() if k != "best"}, {"a": 1.0, "b": 1.0})
    assert odds["a"] == pytest.approx(0.5, abs=0.06) and odds["b"] == pytest.approx(0.5, abs=0.06)
    assert odds["a"] + odds["b"] == pytest.approx(1.0, abs=0.01)
    odds = front_probability({k: r[:, m] for k, r in reps.items()}, {"a": 1.0, "b": 1.0, "best": 0.5})
    assert odds == {"a": 0.0, "b": 0.0, "best": 1.0}
    # A dearer point that is also more accurate is on the front beside the cheap one.
    odds = front_probability({"cheap": reps["a"][:, m], "dear": reps["best"][:, m]}, {"cheap": 1.0, "dear": 2.0})
    assert odds == {"cheap": 1.0, "dear": 1.0}


def test_replicates_refuse_different_query_sets():
    with pytest.raises(ValueError, match="different query sets"):
        replicates({"a": Sample((0,), np.zeros((1, len(SCORES), 10))), "b": Sample((0,), np.zeros((1, len(SCORES), 11)))})


def test_a_configurations_interval_does_not_depend_on_the_others_in_the_report():
    rng = np.random.default_rng(8)
    a = Sample((0, 1), np.stack([run_values(rng, 400, 0.3) for _ in range(2)]))
    b = Sample((0, 1), np.stack([run_values(rng, 400, 0.5) for _ in range(2)]))
    alone, together = replicates({"a": a}, seed=0)["a"], replicates({"b": b, "a": a}, seed=0)["a"]
    assert np.array_equal(alone, together)
