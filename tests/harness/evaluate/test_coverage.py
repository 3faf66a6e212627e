"""The harness's 95 % intervals hold the simulated truth as often as they claim (harness.evaluate.coverage), and the
simulation is sharp enough to catch a method that does not: the old crossed percentile bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit

from harness.evaluate.coverage import (CHUNK, DESIGNS, REGIMES, SCORE_NAMES, SEEDS, covered, expected_sigmoid, main,
                                       simulate, table, truths)
from harness.evaluate.statistics import components

BENCHMARKS = 1000


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return table(BENCHMARKS, seed=0)


def test_truth_is_the_expectation_of_the_simulated_values():
    regime, design = REGIMES[0], DESIGNS[0]
    assert expected_sigmoid(0.0, 2.0) == pytest.approx(0.5, abs=1e-12)
    z = np.random.default_rng(0).standard_normal(2_000_000)
    assert expected_sigmoid(1.8, 1.3) == pytest.approx(expit(1.8 + 1.3 * z).mean(), abs=1e-3)
    values = simulate(regime, design, 2, 400, np.random.default_rng(1))
    truth = truths(regime)
    for name in SCORE_NAMES:
        a, b = values[name].astype(np.float64).mean(axis=(2, 3))  # each benchmark's score
        for found, expected in ((a, truth[name][0]), (a - b, truth[name][1])):
            assert abs(found.mean() - expected) < 4 * found.std(ddof=1) / np.sqrt(len(found))


def test_every_cell_covers_95_percent(rows):
    assert len(rows) == len(REGIMES) * len(DESIGNS) * len(SEEDS)
    for row in rows:
        for kind in ("point", "difference"):
            for name in SCORE_NAMES:
                found = row[f"{kind} {name}"]
                cell = f"{row['regime']}, {row['design']}, R = {row['seeds']}: {kind} {name} covers {found:.1%}"
                assert found >= 0.93, cell
                assert row["seeds"] < 5 or found <= 0.99, cell


def test_the_regimes_are_as_described(rows):
    at_ten = {(r["regime"], r["design"]): r for r in rows if r["seeds"] == 10}
    for design in DESIGNS:
        seeds = at_ten["seeds dominate", design.name]
        test_set = at_ten["test set dominates", design.name]
        assert seeds["seed std hit@1"] > 2.5 * seeds["query SE hit@1"]
        assert test_set["seed std hit@1"] < 0.75 * test_set["query SE hit@1"]
    mars = at_ten["test set dominates", DESIGNS[1].name]
    assert mars["seed std hit@1"] == pytest.approx(0.005, abs=0.0015)
    assert mars["query SE hit@1"] == pytest.approx(0.008, abs=0.0015)


def crossed_bootstrap(values: np.ndarray, resamples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The replaced method: per benchmark (count, seeds, queries), resample queries and, apart, seeds; percentiles."""
    count, seeds, queries = values.shape
    weights = rng.multinomial(queries, np.full(queries, 1 / queries), size=resamples) / queries
    # One 2-D product: numpy's batched 3-D matmul is an order of magnitude slower here.
    per_seed = (values.reshape(-1, queries) @ weights.T).reshape(count, seeds, resamples).transpose(0, 2, 1)
    pick = rng.integers(0, seeds, (resamples, seeds))
    replicated = np.take_along_axis(per_seed, pick[None], axis=2).mean(axis=2)
    return tuple(np.percentile(replicated, [2.5, 97.5], axis=1))


def test_the_old_crossed_bootstrap_fails_where_the_harness_holds():
    regime, design = REGIMES[0], DESIGNS[0]  # seeds dominate, default-like test set
    truth = truths(regime)["hit@1"][0]
    old = new = 0
    for first in range(0, BENCHMARKS, CHUNK):
        rng = np.random.default_rng([7, first])
        hits = simulate(regime, design, 3, CHUNK, rng)["hit@1"][0].astype(np.float64)
        low, high = crossed_bootstrap(hits, 400, rng)
        old += int(((low <= truth) & (truth <= high)).sum())
        new += int(covered(components(hits, np.repeat(np.arange(design.sizes.size), design.sizes)), truth).sum())
    assert old / BENCHMARKS < 0.90 and new / BENCHMARKS >= 0.93


def test_cli_prints_the_markdown_table(capsys):
    assert main(["--benchmarks", "20", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "| regime | design | R | point hit@1 | point AP | difference hit@1 | difference AP |" in out
    assert out.count("| seeds dominate | ") == 1 + len(DESIGNS) * len(SEEDS)
