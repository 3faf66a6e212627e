"""Speed and peak memory of the sweep's statistics at sweep scale: harness.evaluate.front.assess (intervals,
P(on the front) and sure-front of every candidate) and harness.sweep.race.decide (the race's verdicts).

Run: pytest tests/benchmarks/test_front_scale.py --benchmark-only -n 0
Synthetic candidates of 3 seeds (most on one seed list, paired; a tenth on another, unpaired) x 5 scores x 1,500
queries in 300 identities of 5: hit@k 0/1 and AP-like values in [0, 1], accuracy rising with a random cost plus noise,
so there is a front and many near it. One timed round each (fresh Samples: a Sample caches its sums and estimate), then
the peak memory (tracemalloc, which numpy reports to) beyond the inputs in extra_info, bounded, from an untimed
round. No timing asserts. Measured on 2 AMD EPYC cores, one of them busy, OPENBLAS_NUM_THREADS=1 (threaded BLAS was
~6x slower in front_draws under load): assess 1,000: 1.9 s; 10,000: 20.1-22.1 s, peak 852 MB; decide 1,000: 2.7 s;
10,000: 12.4-26.4 s, peak 422 MB. What is left is per candidate: front_draws' (draws x identities) product (~9 s at
10,000) and the exact sums of the non-0/1 scores (math.fsum)."""

import tracemalloc

import numpy as np
import pytest

from harness.evaluate.front import assess
from harness.evaluate.statistics import SCORES, Sample
from harness.sweep.race import decide

SEEDS, QUERIES, IDENTITIES = 3, 1500, 300
PEAK_LIMIT_MB = 1536


def candidates(count: int, seed: int = 0) -> tuple[dict[str, Sample], dict[str, float]]:
    """`count` Samples and their costs."""
    rng = np.random.default_rng(seed)
    clusters = np.repeat(np.arange(IDENTITIES), QUERIES // IDENTITIES)
    cost = rng.uniform(1.0, 100.0, count)
    rate = np.clip(0.3 + 0.1 * np.log(cost) + rng.normal(0, 0.08, count), 0.02, 0.98)
    samples = {}
    for i in range(count):
        values = np.empty((SEEDS, len(SCORES), QUERIES))
        ease = rng.random(QUERIES)  # per query, shared by its seeds
        draw = rng.random((SEEDS, 1, QUERIES)) * 0.9 + 0.1 * ease
        values[:, :3] = draw < rate[i] * np.array([1.0, 1.2, 1.3])[:, None]  # hit@1, @5, @10
        values[:, 3] = np.clip(rate[i] * (0.5 + ease) + rng.normal(0, 0.1, (SEEDS, QUERIES)), 0.0, 1.0)
        values[:, 4] = values[:, 3] ** 2
        seeds = (0, 1, 2) if i % 10 else (3, 4, 5)
        samples[f"c{i}"] = Sample(seeds, values, clusters)
    return samples, {f"c{i}": float(cost[i]) for i in range(count)}


def measured(benchmark, function, count: int, *args):
    """One timed round of `function` on fresh candidates, then its peak memory (MiB beyond what was allocated before)
    in extra_info from a second round on fresh ones under tracemalloc, which slows Python allocations (the exact
    sums' floats) many times over, so it is kept out of the timed round."""
    samples, cost = candidates(count)
    result = benchmark.pedantic(function, args=(samples, cost, *args), rounds=1, iterations=1)
    del samples, cost
    samples, cost = candidates(count)
    tracemalloc.start()
    try:
        function(samples, cost, *args)
        benchmark.extra_info["peak_mb"] = peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert peak < PEAK_LIMIT_MB
    return result


@pytest.mark.parametrize("count", [1_000, 10_000])
def test_assess_at_sweep_scale(benchmark, count):
    benchmark.group = f"assess {count:,} candidates x 2,000 draws"
    found = measured(benchmark, assess, count, 2000)
    assert len(found) == count
    benchmark.extra_info["sure_rank1"] = sum(a.sure["rank1"] for a in found.values())
    benchmark.extra_info["sure_map"] = sum(a.sure["map"] for a in found.values())


@pytest.mark.parametrize("count", [1_000, 10_000])
def test_race_decide_at_sweep_scale(benchmark, count):
    benchmark.group = f"race.decide {count:,} candidates"
    verdicts = measured(benchmark, decide, count, "map", 5)
    assert len(verdicts) == count
    for verdict in ("dominated", "front", None):
        benchmark.extra_info[str(verdict)] = sum(v == verdict for v in verdicts.values())
