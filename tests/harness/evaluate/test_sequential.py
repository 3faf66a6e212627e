"""The group-sequential test (harness.evaluate.sequential): its boundaries are the published ones, its t levels are
exact, it decides a zero difference at most 5 % of the time over looks at 2..10 seeds where re-testing the fixed
95 % interval decides it far more often, and its plan keeps 80 % power with fewer seeds on average than the fixed
design."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from harness.evaluate.coverage import REGIMES
from harness.evaluate.sequential import (VERDICTS, Plan, boundaries, look, normal_model, operating, plan_for, run, spent,
                                         t_levels)
from harness.evaluate.sequential_sim import CASES, false_decisions, main, normal_seeds, power
from harness.evaluate.statistics import Estimate, half_width, seeds_needed

BENCHMARKS = 2000  # a regime: Monte Carlo SE ~0.5 points at 5 %, ~0.9 at 80 %


def scalar(point, seed_var: float, seeds: int, query_part: float = 0.0) -> Estimate:
    """A paired difference's estimate (fractions; `point` a number or an array over scores) on 300 identities."""
    point = np.asarray(point, dtype=np.float64)
    return Estimate(point, *(np.full_like(point, v) for v in (seed_var / seeds, query_part, 0.0, seed_var)),
                    seeds, seeds - 1, 299, seeds > 1)


def test_boundaries_are_the_published_ones():
    # gsDesign sfLDOF / rpact asOF, 5 equally spaced looks, two-sided 0.05
    assert boundaries(tuple(np.arange(1, 6) / 5)) == pytest.approx((4.877, 3.357, 2.680, 2.290, 2.031), abs=6e-4)
    assert boundaries((1.0,)) == pytest.approx((1.959964,), abs=1e-6)
    assert spent(1.0) == pytest.approx(0.05)


def test_known_variance_boundaries_spend_alpha_over_the_looks():
    fractions = tuple(np.arange(2, 11) / 10)
    z = np.cumsum(np.random.default_rng(0).standard_normal((200_000, 10)), axis=1)[:, 1:] / np.sqrt(np.arange(2, 11))
    crossed = np.abs(z) >= np.array(boundaries(fractions))
    first = np.where(crossed.any(axis=1), crossed.argmax(axis=1), -1)
    expected = np.diff(np.r_[0.0, spent(np.array(fractions))])
    found = np.array([(first == k).mean() for k in range(9)])
    assert np.abs(found - expected).max() < 4 * np.sqrt(0.014 / 200_000)  # each look's share, ~4 Monte Carlo SE
    assert crossed.any(axis=1).mean() == pytest.approx(0.05, abs=0.0015)  # ~3 Monte Carlo SE


def test_t_levels_are_exact_for_normal_seeds_and_tend_to_the_z_levels():
    exact, converted = normal_seeds(Plan(2, 10), 200_000, seed=1)
    assert exact == pytest.approx(0.05, abs=0.0015)  # ~3 Monte Carlo SE
    # z_k converted to t levels decide more often: each look's own variance makes the t's less correlated than Z's
    assert converted > 0.054
    many = tuple(range(20, 81, 20))  # 19-79 degrees of freedom: the t levels are within 3 % of the z levels
    assert t_levels(many, 80) == pytest.approx(2 * stats.norm.sf(boundaries(tuple(np.array(many) / 80))), rel=0.03)


def test_a_plan_looks_at_every_round_up_to_max_seeds():
    assert Plan(2, 10).looks == tuple(range(2, 11))
    assert Plan(3, 10, step=3).looks == (3, 6, 9, 10)
    assert Plan(4, 4).looks == (4,) and Plan(4, 4).level(4) == pytest.approx(0.05, rel=2e-3)  # the chain's cells
    plan = Plan(3, 10, step=3)
    assert plan.level(2) == 0.0
    assert plan.level(7) == plan.level(6) < plan.level(9) < plan.level(10) == plan.level(12) < 0.05
    for bad in ((1, 10), (5, 4), (2, 10, 0)):
        with pytest.raises(ValueError, match="a plan needs"):
            Plan(*bad)


def test_a_look_gives_its_verdict_and_repeated_interval():
    plan = Plan(2, 10)
    decided = look(plan, scalar(0.08, 0.0004, 6))
    assert decided.verdict == "decided" and decided.level == plan.level(6)
    width = half_width(scalar(0.08, 0.0004, 6), plan.level(6))
    assert (decided.low, decided.high) == pytest.approx((0.08 - width, 0.08 + width))
    assert look(plan, scalar(0.001, 0.0025, 5)).verdict == "futile"
    assert look(plan, scalar(0.03, 0.0025, 5)).verdict == "continue"
    assert look(plan, scalar(0.03, 0.0025, 10)).verdict == "budget"
    assert look(plan, scalar(0.03, 0.0025, 12)).level == plan.level(10)
    early = look(plan, scalar(0.03, 0.0025, 1))
    assert early.verdict == "continue" and early.level == 0 and early.low == -math.inf
    # Seeds that tie measure no seed variation: no decision however far the point is from 0.
    assert look(plan, scalar(0.03, 0.0, 4)).verdict == "continue"
    assert {decided.verdict} <= set(VERDICTS)


def test_a_look_over_scores_decides_on_the_chosen_one():
    plan, est = Plan(2, 10), scalar([0.08, 0.001], 0.0004, 6)
    assert look(plan, est).verdict == "decided" and look(plan, est, score=1).verdict == "futile"
    assert look(plan, est).point.shape == (2,)
    with pytest.raises(ValueError, match="1-D"):
        look(plan, Estimate(*(np.zeros((2, 2)) for _ in range(5)), 6, 5, 299, True))


@pytest.fixture(scope="module")
def null_rates() -> dict[str, dict]:
    return {regime.name: false_decisions(regime, BENCHMARKS, seed=0) for regime in REGIMES}


def test_no_difference_is_decided_at_most_5_percent_of_the_time(null_rates):
    """Both regimes, paired arms and arms that differ by identity, hit@1 and AP: at most 5 % plus ~2 Monte Carlo
    SE (0.5 points at 2,000 benchmarks) with futility and without; re-testing the fixed interval inflates."""
    for regime, cases in null_rates.items():
        assert set(cases) == set(CASES)
        for case, row in cases.items():
            where = f"{regime}, {case}: {row}"
            assert np.all(row["sequential"] <= row["no futility"]), where
            assert np.all(row["no futility"] < 0.06), where
            assert np.all(row["seeds"] < 10), where
        assert np.all(cases["paired arms"]["naive"] > 0.12), f"{regime}: {cases['paired arms']}"
    pooled = np.mean([row["no futility"] for cases in null_rates.values() for row in cases.values()])
    assert pooled <= 0.05, pooled  # 16,000 decisions: SE ~0.2 points


def test_the_plan_keeps_80_percent_power_with_fewer_seeds_than_the_fixed_design():
    found = power(REGIMES[0], shift=0.4, count=BENCHMARKS)
    assert found["fixed seeds"] == 8 and found["fixed power"] > 0.78
    assert found["fixed seeds"] <= found["max seeds"] <= 1.2 * found["fixed seeds"]
    assert found["power"] >= 0.8 and found["mean seeds"] < found["fixed seeds"]
    assert found["model"].power == pytest.approx(found["power"], abs=0.03)  # the normal model plan_for relies on
    assert found["model"].seeds == pytest.approx(found["mean seeds"], abs=0.3)


def test_plan_for_is_the_fewest_seeds_with_enough_power():
    est = scalar(0.0, 0.046**2, 10)
    plan = plan_for(est, 0.04)
    assert plan.looks[0] == 2 and plan.max_seeds >= seeds_needed(est, np.asarray(0.04))
    assert operating(plan, est, 0.04).power >= 0.8 > operating(Plan(2, plan.max_seeds - 1), est, 0.04).power
    # A test set too small for the difference: its query part alone keeps it undecided.
    assert plan_for(scalar(0.0, 0.046**2, 10, query_part=0.02**2), 0.04) is None


def test_the_normal_model_decides_a_zero_difference_5_percent_of_the_time():
    est, plan = scalar(0.0, 0.03**2, 10), Plan(2, 8)

    def draws():
        return normal_model(est, plan.looks, 0.0, 100_000, np.random.default_rng(3))

    decided, seeds = run(plan, draws(), 0.0, futility=False)
    assert decided.mean() == pytest.approx(0.05, abs=0.002) and np.all(seeds[~decided] == 8)
    # Futility only ever withholds a decision (non-binding), and stops most benchmarks early.
    stopped, used = run(plan, draws(), 0.0)
    assert np.all(stopped <= decided) and used.mean() < 7


def test_the_printer_shows_each_looks_levels(capsys):
    assert main(["--first", "2", "--max-seeds", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and lines[1].split()[:3] == ["2", "0.400", "3.357"]
