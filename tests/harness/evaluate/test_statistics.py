"""harness.evaluate.statistics against independent computations: the estimator written out loop by loop, the plain
t interval, Holm's procedure, test inversion, and the Pareto front's odds in cases worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from scipy import stats

from harness.evaluate.metrics import QueryOutcomes
from harness.evaluate.statistics import (PAIRED, SCORES, UNPAIRED, Estimate, Sample, cluster_sums, compare, components,
                                         difference, half_width, holm, interval, mdd, p_improve, p_value,
                                         query_clusters, query_interval, query_values, seeds_needed, table_values)
from harness.evaluate.front import assess, front_draws, front_probability

R1, MAP = SCORES.index("rank1"), SCORES.index("map")


def outcomes(first: np.ndarray, ap: np.ndarray) -> QueryOutcomes:
    """Outcomes with one good match per query at rank `first` (so last = first, INP = 1 / first)."""
    return QueryOutcomes(first.astype(np.int64), first.astype(np.int64), np.ones(len(first), np.int64), ap)


def run_values(rng: np.random.Generator, n: int, p_hit: float) -> np.ndarray:
    first = np.where(rng.random(n) < p_hit, 1, rng.integers(2, 40, n))
    return query_values(outcomes(first, 1.0 / first))


def sample(seeds: tuple[int, ...], runs: list[np.ndarray], per_identity: int = 3) -> Sample:
    """A Sample of `runs` (each SCORES x N), queries grouped `per_identity` to an identity in order."""
    n = runs[0].shape[1]
    return Sample(seeds, np.stack(runs), np.arange(n) // per_identity)


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


def hand_estimate(y: list[list[float]], clusters: list[int]) -> tuple[float, float, float]:
    """(point, SE_s^2, SE_q^2) of the module docstring's estimator, written out with loops over plain floats."""
    seeds, n = len(y), len(y[0])
    groups = sorted(set(clusters))
    g = len(groups)

    def robust(x: list[float]) -> float:
        mean = sum(x) / n
        return g / (g - 1) * sum(sum(x[q] - mean for q in range(n) if clusters[q] == c) ** 2 for c in groups) / n**2

    m = [sum(row) / n for row in y]
    point = sum(m) / seeds
    s2 = sum((mr - point) ** 2 for mr in m) / (seeds - 1)
    v = [sum(y[r][q] for r in range(seeds)) / seeds for q in range(n)]
    residuals = [[y[r][q] - m[r] - v[q] + point for q in range(n)] for r in range(seeds)]
    noise = sum(robust(z) for z in residuals) / seeds * seeds / (seeds - 1)  # V_e
    return point, s2 / seeds, max(robust(v) - noise / seeds, 0.0)


def test_estimator_equals_a_hand_computation():
    y = [[1, 0, 1, 1, 0, 1, 0], [1, 1, 1, 0, 0, 1, 0], [0, 1, 1, 1, 0, 1, 1]]
    y = [[0.9 * a + 0.05 * (q % 3) for q, a in enumerate(row)] for row in y]  # not only 0/1: AP-like too
    clusters = [3, 0, 0, 1, 1, 1, 2]  # unsorted labels: one cluster first, the others after
    point, seed_part, query_part = hand_estimate(y, clusters)
    est = components(np.array(y), np.array(clusters))
    assert est.point == pytest.approx(point, abs=1e-15)
    assert est.seed_part == pytest.approx(seed_part, rel=1e-12)
    assert est.query_part == pytest.approx(query_part, rel=1e-12)
    assert (est.seeds, est.seed_df, est.query_df, est.seed_measured) == (3, 2, 3, True)
    width = math.sqrt(stats.t.ppf(0.975, 2) ** 2 * seed_part + stats.t.ppf(0.975, 3) ** 2 * query_part)
    assert half_width(est) == pytest.approx(width, rel=1e-12)
    # Leading dimensions are independent estimates: the batch of two equals each alone.
    batch = components(np.stack([np.array(y), 1 - np.array(y)]), np.array(clusters))
    assert batch.point[0] == pytest.approx(point) and batch.seed_part[1] == pytest.approx(seed_part)


def test_cluster_sums_match_np_add_at():
    rng = np.random.default_rng(0)
    clusters = rng.integers(0, 40, 300)
    values = rng.random((2, 3, 300))
    sums, sizes = cluster_sums(values, clusters)
    expected = np.zeros((2, 3, 40))
    np.add.at(expected, (slice(None), slice(None), clusters), values)
    present = np.unique(clusters)
    assert np.allclose(sums, expected[..., present]) and sizes.tolist() == np.bincount(clusters)[present].tolist()


def test_query_interval_with_one_identity_per_query_is_the_plain_t_interval():
    values = run_values(np.random.default_rng(1), 300, 0.3)
    found = query_interval(values, np.arange(300))
    for i, name in enumerate(SCORES):
        expected = stats.t.interval(0.95, 299, loc=values[i].mean(), scale=stats.sem(values[i]))
        assert found[name] == pytest.approx(list(expected), rel=1e-10)


def test_identities_widen_the_one_run_interval():
    rng = np.random.default_rng(2)
    per_identity = np.repeat(rng.random(100) < 0.5, 5).astype(float)  # five alike queries per identity
    values = np.tile(per_identity, (len(SCORES), 1))
    alone = query_interval(values, np.arange(500))["rank1"]
    grouped = query_interval(values, np.arange(500) // 5)["rank1"]
    assert (grouped[1] - grouped[0]) == pytest.approx(math.sqrt(5) * (alone[1] - alone[0]), rel=0.03)


def test_one_seed_is_the_query_part_alone_and_flagged():
    values = run_values(np.random.default_rng(3), 400, 0.4)
    one = sample((7,), [values])
    assert not one.estimate.seed_measured and one.estimate.seed_part[R1] == 0
    low, high = interval(one.estimate)
    assert [low[R1], high[R1]] == pytest.approx(query_interval(values, one.clusters)["rank1"])


def test_seed_variation_widens_the_interval():
    base = run_values(np.random.default_rng(4), 600, 0.3)
    calm = sample((0, 1, 2, 3), [base] * 4)
    shifted = sample((0, 1, 2, 3), [base, base, base, np.clip(base + 0.2, 0, 1)])
    assert calm.estimate.seed_part[R1] == 0
    assert half_width(shifted.estimate)[R1] > 1.5 * half_width(calm.estimate)[R1]


def test_table_values_cluster_by_pid_and_keep_unknown_identities_apart():
    table = pl.DataFrame({"protocol": ["p"] * 5, "query": [4, 0, 1, 2, 3], "pid": [None, 7, 7, None, 9],
                          "first_rank": [1, 1, 2, 1, None], "last_rank": [1, 1, 2, 3, None],
                          "matches": [1, 1, 1, 2, 0], "ap": [1.0, 1.0, 0.5, 0.8, None]},
                         schema_overrides={"query": pl.Int32, "pid": pl.Int64})
    values, clusters = table_values(table, "p")
    assert values[R1].tolist() == [1, 0, 1, 1]  # query 3 has no match
    assert clusters[0] == clusters[1] and len(set(clusters.tolist())) == 3  # two unknowns: two clusters
    assert query_clusters(np.array([5, 3, 5, 8])).tolist() == [1, 0, 1, 2]


def test_holm_by_hand_and_against_statsmodels():
    assert holm([0.01, 0.04, 0.03, 0.005]).tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]).tolist() == [1.0, 1.0]  # capped at 1, and monotone: 0.6 x 1 would fall below 1
    try:
        from statsmodels.stats.multitest import multipletests
    except ImportError:
        return
    p = np.random.default_rng(5).random(12) ** 3
    assert holm(p) == pytest.approx(multipletests(p, method="holm")[1])


def estimates(point: np.ndarray, seed_part: float, query_part: float, seeds: int = 3) -> Estimate:
    shape = np.ones_like(point)
    return Estimate(point, seed_part * shape, query_part * shape, 0 * shape, seeds * seed_part * shape, seeds,
                    seeds - 1, 299, True)


def test_p_value_is_below_5_percent_exactly_when_decided_and_monotone():
    width = half_width(estimates(np.zeros(1), 1e-4, 4e-5))[0]
    points = np.r_[np.linspace(-3, 3, 601) * width, width, np.nextafter(width, 1), -np.nextafter(width, 1)]
    est = estimates(points, 1e-4, 4e-5)
    low, high = interval(est)
    decided = (low > 0) | (high < 0)
    p = p_value(est)
    assert np.array_equal(p < 0.05, decided) and decided.any() and not decided.all()
    order = np.argsort(np.abs(points[:601]))
    assert np.all(np.diff(p[:601][order]) <= 1e-12) and p[300] == 1.0
    # Inverted: at alpha = p the interval just touches 0 (half a width: not decided; 1.8 widths: decided).
    for i in (350, 480):
        assert half_width(est, p[i])[i] == pytest.approx(abs(points[i]), rel=1e-9)


def test_mdd_and_seeds_needed_by_brute_force():
    est = estimates(np.array([0.03, 0.001, 0.02]), 2e-4, 1e-5)
    z = stats.norm.ppf(0.8)
    assert mdd(est) == pytest.approx(half_width(est) + z * math.sqrt(2e-4 + 1e-5))
    needed = seeds_needed(est, est.point)

    def mdd_at(seeds: int) -> float:
        seed_part = 3 * 2e-4 / seeds
        return (math.sqrt(stats.t.ppf(0.975, seeds - 1) ** 2 * seed_part + stats.t.ppf(0.975, 299) ** 2 * 1e-5)
                + z * math.sqrt(seed_part + 1e-5))

    for k in (0, 2):
        first = next(r for r in range(2, 1001) if mdd_at(r) <= est.point[k])
        assert needed[k] == first
    # 0.1 points: below what the query part alone can detect, however many seeds.
    assert np.isnan(needed[1]) and (stats.t.ppf(0.975, 299) + z) * math.sqrt(1e-5) > 0.001


def test_p_improve_by_hand():
    # (0.5, 0.55) B, (0.5, 0.6) B, (0.6, 0.55) A, (0.6, 0.6) tie.
    assert p_improve(np.array([0.5, 0.6]), np.array([0.55, 0.6])) == pytest.approx(0.375)


def test_identical_runs_differ_by_exactly_nothing():
    a = run_values(np.random.default_rng(6), 300, 0.3)
    s = sample((0, 1), [a, a])
    found = compare(s, sample((0, 1), [a, a]), SCORES)
    assert found["pairing"] == PAIRED
    for name in SCORES:
        entry = found[name]
        assert (entry["diff"], entry["lo"], entry["hi"], entry["p"], entry["p_improve"]) == (0, 0, 0, 1, 0.5)
        assert not entry["decided"] and entry["seeds_needed"] is None and entry["seeds"] == 2


def test_a_far_better_difference_is_decided():
    rng = np.random.default_rng(7)
    good = sample((0, 1, 2), [run_values(rng, 600, 0.6) for _ in range(3)])
    poor = sample((0, 1, 2), [run_values(rng, 600, 0.2) for _ in range(3)])
    found = compare(good, poor)["rank1"]
    assert found["decided"] and found["lo"] > 0 and found["p"] < 1e-3 and found["p_improve"] == 1
    assert found["mdd"] < found["diff"] and 2 <= found["seeds_needed"] <= 3


def test_paired_difference_is_narrower_than_unpaired_for_correlated_runs():
    rng = np.random.default_rng(8)
    base, runs_a, runs_b = run_values(rng, 800, 0.4), [], []
    flip = rng.random(800) < 0.05  # B differs from A on 5 % of the queries only
    for _ in range(3):
        a = base.copy()
        seed_noise = rng.random(800) < 0.3  # what a seed changes, in A and B alike (one initialisation)
        a[:, seed_noise] = run_values(rng, int(seed_noise.sum()), 0.4)
        b = a.copy()
        b[:, flip] = run_values(rng, int(flip.sum()), 0.4)
        runs_a.append(a)
        runs_b.append(b)
    paired = difference(sample((0, 1, 2), runs_a), sample((0, 1, 2), runs_b))
    unpaired = difference(sample((0, 1, 2), runs_a), sample((3, 4, 5), runs_b))
    assert (paired.pairing, unpaired.pairing) == (PAIRED, UNPAIRED)
    assert paired.point[R1] == unpaired.point[R1] == pytest.approx(np.mean(runs_a, axis=(0, 2))[R1]
                                                                    - np.mean(runs_b, axis=(0, 2))[R1])
    assert half_width(paired)[R1] < 0.5 * half_width(unpaired)[R1]


def test_unpaired_with_one_seed_on_one_side_is_flagged():
    rng = np.random.default_rng(9)
    est = difference(sample((0, 1, 2), [run_values(rng, 300, 0.4) for _ in range(3)]),
                     sample((0,), [run_values(rng, 300, 0.4)]))
    assert not est.seed_measured and est.seed_df == 2 and est.seeds == 1
    assert np.isnan(seeds_needed(est, np.full(len(SCORES), 0.5))).all()


def test_different_query_sets_are_refused():
    a, b = Sample((0,), np.zeros((1, len(SCORES), 10)), np.arange(10)), Sample((0,), np.zeros((1, len(SCORES), 11)),
                                                                                np.arange(11))
    with pytest.raises(ValueError, match="different query sets"):
        difference(a, b)
    with pytest.raises(ValueError, match="different query sets"):
        front_draws({"a": a, "b": b})


def test_front_probability_is_unchanged_on_a_fixed_input():
    accuracy = {"a": np.array([0.5, 0.6, 0.7, 0.4, 0.55]), "b": np.array([0.55, 0.55, 0.55, 0.55, 0.55]),
                "c": np.array([0.9, 0.1, 0.9, 0.1, 0.5]), "d": np.array([0.95, 0.95, 0.2, 0.2, 0.2])}
    cost = {"a": 1.0, "b": 1.0, "c": 2.0, "d": 3.0}
    # Draw by draw: a on the front in draws 2, 3, 5 (5: ties b exactly); b in 1, 4, 5; c in 1, 3; d in 1, 2.
    assert front_probability(accuracy, cost) == {"a": 0.6, "b": 0.6, "c": 0.4, "d": 0.4}
    assert front_probability({}, {}) == {}


def test_front_draws_are_deterministic_correlated_and_of_the_right_spread():
    rng = np.random.default_rng(10)
    runs = {k: [run_values(rng, 900, p) for _ in range(6)] for k, p in (("a", 0.4), ("b", 0.42), ("c", 0.41))}
    samples = {"a": sample(tuple(range(6)), runs["a"]), "b": sample(tuple(range(6)), runs["b"]),
               "c": sample(tuple(range(6, 12)), runs["c"])}
    draws = front_draws(samples, 20000, seed=3)
    again = front_draws(samples, 20000, seed=3)
    assert all(np.array_equal(draws[k], again[k]) for k in draws)
    for key, s in samples.items():
        est = s.estimate
        assert draws[key][:, MAP].mean() == pytest.approx(est.point[MAP], abs=4 * math.sqrt(
            (est.seed_part[MAP] + est.query_part[MAP]) / 20000))
        # A t_5 has variance 5 / 3: the seed part's draws carry 5 / 3 x SE_s^2.
        assert draws[key][:, MAP].var() == pytest.approx(5 / 3 * est.seed_part[MAP] + est.query_part[MAP], rel=0.1)
    # a and b share seeds and queries: their draws move together; c shares only the queries.
    corr = np.corrcoef([draws["a"][:, R1], draws["b"][:, R1], draws["c"][:, R1]])
    assert corr[0, 1] > 0.5 and corr[0, 1] > corr[0, 2] > 0


def test_assess_sure_front_needs_a_decided_win_over_every_cheaper_point():
    rng = np.random.default_rng(11)
    cheap = sample((0, 1, 2), [run_values(rng, 900, 0.3) for _ in range(3)])
    dear = sample((0, 1, 2), [run_values(rng, 900, 0.6) for _ in range(3)])
    twin = Sample(dear.seeds, dear.values.copy(), dear.clusters)  # as good as dear, run for run
    found = assess({"cheap": cheap, "dear": dear}, {"cheap": 1.0, "dear": 2.0}, draws=500)
    assert found["cheap"].sure == {"rank1": True, "map": True}  # nothing costs less
    assert found["dear"].sure == {"rank1": True, "map": True} and found["dear"].p_front["rank1"] == 1.0
    assert list(found["dear"].lo) == list(interval(dear.estimate)[0])
    # An equally good point at the same cost: neither is sure; one without per-query values: no verdict.
    found = assess({"cheap": cheap, "dear": dear, "twin": twin}, {"cheap": 1.0, "dear": 2.0, "twin": 2.0}, 500)
    assert not found["dear"].sure["rank1"] and not found["twin"].sure["rank1"]
    found = assess({"dear": dear}, {"cheap": 1.0, "dear": 2.0, "unplaced": None}, 500)
    assert found["dear"].sure == {"rank1": False, "map": False} and found["dear"].p_front["rank1"] == 1.0
