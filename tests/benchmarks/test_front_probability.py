"""Speed and peak memory of harness.evaluate.front.front_probability, P(on the front) over draws.

Run: pytest tests/benchmarks/test_front_probability.py --benchmark-only -n 0
The sort by cost is O(draws x points) in time and memory; the pairwise version it replaced (test_front's
reference) builds (draws, points, points) booleans: 1.2 s and 0.8 GB at 256 points x 2,000 draws. Both run on the
same 256 points in one group, so the table's ratio column compares them on the same machine and load; the sort alone
runs at 10,000 points, with its peak memory (tracemalloc, which numpy reports to) in extra_info and bounded.
"""

import importlib.util
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from harness.evaluate.front import front_probability

DRAWS = 2000
PEAK_LIMIT_MB = 1024


def _pairwise():
    """test_front's pairwise reference, loaded from its file (the test folders are not packages)."""
    spec = importlib.util.spec_from_file_location("front_reference", Path(__file__).parents[1] / "harness" / "evaluate" / "test_front.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.pairwise_front_probability


pairwise_front_probability = _pairwise()


def points(count: int, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """`count` points of DRAWS normal accuracy draws each, and costs of about four points each (ties)."""
    rng = np.random.default_rng(seed)
    draws = rng.normal(0.5, 0.05, (count, DRAWS))
    costs = rng.integers(0, max(count // 4, 1), count).astype(float)
    return ({f"p{i}": draws[i] for i in range(count)}, {f"p{i}": float(costs[i]) for i in range(count)})


def peak_mb(function, *args) -> float:
    """Peak MiB that numpy and Python allocate during one call, beyond what was allocated before (the inputs)."""
    tracemalloc.start()
    try:
        function(*args)
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def test_front_probability_at_10000_points(benchmark):
    accuracy, cost = points(10_000)
    benchmark.group = "front_probability 10,000 points x 2,000 draws"
    result = benchmark.pedantic(front_probability, args=(accuracy, cost), rounds=5, warmup_rounds=1)
    assert len(result) == 10_000 and all(0 <= p <= 1 for p in result.values())
    benchmark.extra_info["peak_mb"] = peak = peak_mb(front_probability, accuracy, cost)
    assert peak < PEAK_LIMIT_MB  # a memory bound: the pairwise version would need draws x points^2 = 200 GB


@pytest.mark.parametrize("implementation", [pairwise_front_probability, front_probability],
                         ids=["pairwise", "sorted"])
def test_front_probability_against_pairwise_at_256_points(benchmark, implementation):
    accuracy, cost = points(256)
    benchmark.group = "front_probability 256 points x 2,000 draws"
    rounds = 3 if implementation is pairwise_front_probability else 20
    result = benchmark.pedantic(implementation, args=(accuracy, cost), rounds=rounds, warmup_rounds=1)
    assert result == front_probability(accuracy, cost)
    benchmark.extra_info["peak_mb"] = peak_mb(implementation, accuracy, cost)
