"""How sure a score is: bootstrap intervals over queries and seeds, paired comparisons, odds of the Pareto front.

Every score is a mean over queries of a per-query value (hit in the top k: 0 or 1, AP, INP), and a
configuration's score is the mean over its training seeds of those means. Both are samples: of
the queries a test set happens to hold, and of initialisations and data orders.

- One run: a percentile bootstrap over queries (`scipy.stats.bootstrap`, vectorised), for the
  interval in its run record.
- Several seeds of one configuration, and several configurations on one test set: a two-way
  bootstrap of the crossed seeds x queries design (Owen 2007, "The pigeonhole bootstrap"). Each
  replicate resamples the seeds and, independently, the queries; every seed is scored on the same
  queries, so one query draw serves every seed and every configuration. Configurations with the
  same seed list also share the seed draw. Their replicates are therefore paired: differences,
  P(A beats B) and P(on the Pareto front) come from the same draws. No library does a crossed
  bootstrap (scipy's and rliable's resample one axis, or strata), hence the numpy below; its
  query draw is a multinomial count per query, which is index resampling without the index array.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from harness.evaluate.metrics import QueryOutcomes, exact_mean

SCORES = ("rank1", "rank5", "rank10", "map", "minp")  # the scores given intervals, in the rows of `query_values`
CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 2000


def query_values(outcomes: QueryOutcomes) -> np.ndarray:
    """(len(SCORES), queries with a match) float64: each query's hit@1, hit@5, hit@10, AP and INP."""
    valid = outcomes.valid
    first = outcomes.first_rank[valid]
    return np.stack([first <= 1, first <= 5, first <= 10, outcomes.ap[valid],
                     outcomes.matches[valid] / outcomes.last_rank[valid]]).astype(np.float64)


def _mean(values: np.ndarray, axis: int = -1) -> np.ndarray:
    return values.mean(axis=axis)


def query_interval(values: np.ndarray, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict[str, list[float]]:
    """The 95 % percentile-bootstrap interval over queries of each score of one run ({score: [lo, hi]}, fractions)."""
    result = stats.bootstrap((values,), _mean, axis=-1, vectorized=True, n_resamples=resamples,
                             method="percentile", confidence_level=CONFIDENCE, rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return {name: [float(low[i]), float(high[i])] for i, name in enumerate(SCORES)}


@dataclass(frozen=True)
class Sample:
    """One configuration's runs on a test set: its seeds and their per-query values (seeds, SCORES, queries)."""

    seeds: tuple[int, ...]
    values: np.ndarray

    def point(self) -> np.ndarray:
        """Each score: the mean over seeds of each seed's mean over queries (exactly rounded sums)."""
        return np.array([np.mean([exact_mean(row) for row in self.values[:, m]]) for m in range(len(SCORES))])

    def seed_std(self) -> np.ndarray:
        """Each score's sample standard deviation over seeds (NaN for one seed)."""
        if len(self.seeds) < 2:
            return np.full(len(SCORES), np.nan)
        return np.std(self.values.mean(axis=2), axis=0, ddof=1)


def replicates(samples: dict[str, Sample], resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict[str, np.ndarray]:
    """Joint two-way bootstrap replicates, (resamples, SCORES) per configuration, all on one query draw.

    Each configuration's draws depend only on `seed`, the query count and its own seed list, so adding
    another configuration to a report changes no other's interval.
    """
    counts = {s.values.shape[2] for s in samples.values()}
    if len(counts) > 1:
        raise ValueError(f"samples on different query sets ({sorted(counts)} queries): they cannot be paired")
    if not samples:
        return {}
    queries = counts.pop()
    weights = np.random.default_rng([seed, 0]).multinomial(queries, np.full(queries, 1 / queries), size=resamples)
    out = {}
    for name, sample in samples.items():
        count, scores = len(sample.seeds), sample.values.shape[1]
        # Each seed's mean over the resampled queries, per replicate and score: (resamples, seeds, scores).
        per_seed = (sample.values.reshape(count * scores, queries) @ weights.T / queries).reshape(count, scores, -1)
        per_seed = per_seed.transpose(2, 0, 1)
        draw = np.random.default_rng([seed, 1, count, *sample.seeds]).integers(0, count, (resamples, count))
        out[name] = np.take_along_axis(per_seed, draw[:, :, None], axis=1).mean(axis=1)
    return out


def interval(replicated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 95 % percentile interval of each score from its replicates (resamples, SCORES)."""
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(replicated, [tail, 100 - tail], axis=0)
    return low, high


def compare(a: np.ndarray, b: np.ndarray, point_a: np.ndarray, point_b: np.ndarray) -> dict[str, dict[str, float]]:
    """A minus B for each score: the difference, its paired 95 % interval, P(A beats B), P(tie), P(B beats A),
    and whether it is decided (the interval excludes 0)."""
    diff = a - b
    low, high = interval(diff)
    out = {}
    for i, name in enumerate(SCORES):
        out[name] = {"diff": float(point_a[i] - point_b[i]), "lo": float(low[i]), "hi": float(high[i]),
                     "p_a": float(np.mean(diff[:, i] > 0)), "p_tie": float(np.mean(diff[:, i] == 0)),
                     "p_b": float(np.mean(diff[:, i] < 0)), "decided": bool(low[i] > 0 or high[i] < 0)}
    return out


def front_probability(accuracy: dict[str, np.ndarray], cost: dict[str, float]) -> dict[str, float]:
    """For each point, the share of replicates in which no other point dominates it (max accuracy, min cost).

    `accuracy` holds each point's replicates of one score (resamples,), from one `replicates` call; a point
    dominates another when it costs no more, is no less accurate, and is strictly better in one of the two.
    """
    names = list(accuracy)
    if not names:
        return {}
    acc = np.stack([accuracy[n] for n in names], axis=1)  # (resamples, points)
    c = np.array([cost[n] for n in names])
    no_dearer = c[:, None] <= c[None, :]  # [q, p]: q costs no more than p
    cheaper = c[:, None] < c[None, :]
    at_least = acc[:, :, None] >= acc[:, None, :]  # [b, q, p]
    better = acc[:, :, None] > acc[:, None, :]
    dominated = (no_dearer[None] & at_least & (cheaper[None] | better)).any(axis=1)  # [b, p]
    return {n: float(1 - dominated[:, i].mean()) for i, n in enumerate(names)}
