"""How sure a score is: variance-components t-intervals over seeds and identity-clustered queries, paired
differences, and what they say about a comparison.

Every score is a mean over queries of a per-query value (hit in the top k: 0 or 1, AP, INP), and a
configuration's score (a point) is the mean over its R training seeds of those means, every seed scored
on the same N queries. Both are samples: of the queries a test set happens to hold, grouped by identity
(G identities, a few queries each, alike within an identity), and of initialisations and data orders.

The interval of a point, from y[r, q] (seed r, query q, identity g(q)):

- seed means m_r, their sample variance s2_m (ddof 1); seed-averaged query values v_q, and V_Q, the
  cluster-robust (CR1: G / (G - 1)) variance of their mean over identities;
- V_e: the seed x query noise, which both s2_m and V_Q contain: per seed, the CR1 variance of the mean of
  the residuals z[r, q] = y[r, q] - m_r - v_q + point, averaged over seeds, times R / (R - 1);
- seed part SE_s2 = s2_m / R, query part SE_q2 = max(V_Q - V_e / R, 0): V_e / R is counted once, in the
  seed part (counted in both, the interval over-covers at R >= 5);
- half-width sqrt((t_{R-1} SE_s)^2 + (t_{G-1} SE_q)^2): each part its own critical value, combined in
  quadrature. Plain Satterthwaite covers ~88 % at R = 2 when seeds dominate; one t on the sum would too.
- R = 1: the query part alone, V_Q with its noise; `Estimate.seed_measured` is False (seed variation not
  measured).

Why V_e leaves the query part, not the seed part (the first design took max(s2_m - V_e, 0) / R): with 1
or 2 degrees of freedom s2_m often falls below V_e, the seed part is cut to 0 and the t it carries has
nothing to widen. Measured (2,000 benchmarks a cell) that design covered 88 % (point) and 86 % (difference)
of hit@1 at R = 2 with seeds dominating, 92 % (difference) at R = 3, and 88 % for AP differences at R = 2
with the test set dominating. Given the test set the seed means are i.i.d., so t_{R-1} on s2_m / R is
exact for the test set's own expected score; the query part, on G - 1 degrees of freedom, then carries
the test set's distance from the truth. For R' seeds (`seeds_needed`) the seed part is s2_m / R'.

A difference A - B on one test set pairs by seed index when both have the same seed list (the estimator
on d = yA - yB) and is unpaired otherwise (seed parts added, t at the smaller R of the arms that have
one; query part from vA - vB less both arms' V_e / R).

Measured coverage of this method (`python -m harness.evaluate.coverage`, 2,000 simulated benchmarks a
cell; logit-normal seed, identity and query effects, crossed; R = 2, 3, 5, 10; a default-like and a
MARS-like query design; seeds or the test set dominating; points and paired differences of hit@1 and AP):
94.1 % to 98.9 % in every cell, 94.1 % to 96.9 % at R >= 5; the highest at R = 2 with the test set
dominating (t_1 on a seed part that is mostly noise). On the same simulation the old crossed percentile
bootstrap covered 82 % at R = 3 with seeds dominating.

Everything is computed from the per-seed cluster sums (..., R, G), one pass over the values, so the
simulation scores thousands of benchmarks in one call. The front, its odds and sure-front, are in
harness.evaluate.front.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache, cached_property

import numpy as np
import polars as pl
from scipy import stats

from harness.evaluate.metrics import QueryOutcomes, exact_means
from harness.evaluate.queries import outcomes_of, read_queries

SCORES = ("rank1", "rank5", "rank10", "map", "minp")  # the scores given intervals, in the rows of `query_values`
FRONT_SCORES = ("rank1", "map")  # the scores with a Pareto front, P(front) and comparisons
CONFIDENCE = 0.95
POWER = 0.8  # of the minimum detectable difference
MAX_SEEDS = 1000  # the most seeds `seeds_needed` considers
DEFAULT_DRAWS = 2000
PAIRED, UNPAIRED = "seeds paired by index", "unpaired"


def query_values(outcomes: QueryOutcomes) -> np.ndarray:
    """(len(SCORES), queries with a match) float64: each query's hit@1, hit@5, hit@10, AP and INP."""
    valid = outcomes.valid
    first = outcomes.first_rank[valid]
    return np.stack([first <= 1, first <= 5, first <= 10, outcomes.ap[valid],
                     outcomes.matches[valid] / outcomes.last_rank[valid]]).astype(np.float64)


def query_clusters(pids: np.ndarray) -> np.ndarray:
    """Each query's identity as a cluster index 0..G-1 (G distinct pids), in query order."""
    return np.unique(np.asarray(pids), return_inverse=True)[1].reshape(-1)


def table_values(table: pl.DataFrame, protocol: str) -> tuple[np.ndarray, np.ndarray]:
    """One protocol's `query_values` and their `query_clusters` from a per-query table (harness.evaluate.queries)."""
    rows = table.filter(pl.col("protocol") == protocol).sort("query")
    # A query of unknown identity is a cluster of its own: joining the unknowns would invent a resemblance.
    pids = rows.select(pl.col("pid").fill_null(-1 - pl.int_range(pl.len(), dtype=pl.Int64)))["pid"].to_numpy()
    outcomes = outcomes_of(table, protocol)
    return query_values(outcomes), query_clusters(pids[outcomes.valid])


def cluster_sums(values: np.ndarray, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sums of `values` (..., N) over each cluster (..., G), cluster order, and the clusters' sizes (G,)."""
    clusters = np.asarray(clusters).reshape(-1)
    if values.shape[-1] != len(clusters):
        raise ValueError(f"{values.shape[-1]} values for {len(clusters)} cluster labels")
    order = np.argsort(clusters, kind="stable")
    ordered = clusters[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    if np.any(order != np.arange(len(order))):
        values = values[..., order]
    return np.add.reduceat(values, starts, axis=-1), np.diff(np.r_[starts, len(ordered)])


def robust_variance(centred: np.ndarray, queries: int) -> np.ndarray:
    """CR1 cluster-robust variance (fraction^2) of a mean over `queries` from its centred cluster sums (..., G)."""
    groups = centred.shape[-1]
    return groups / max(groups - 1, 1) * np.square(centred).sum(axis=-1) / queries**2


@dataclass(frozen=True)
class Estimate:
    """A point or difference with the two parts of its variance (fraction^2), arrays over any leading shape."""

    point: np.ndarray
    seed_part: np.ndarray  # SE_s^2: seed-to-seed variance of the point on this test set
    query_part: np.ndarray  # SE_q^2: variance over test sets (identity clusters) of its seed-expected value
    query_noise: np.ndarray  # V_e / R: the seed x query noise taken out of the query part (in the seed part)
    seed_var: np.ndarray  # one seed's variance (summed over arms): SE_s^2 at R' seeds is seed_var / R'
    seeds: int  # R (for an unpaired difference the smaller R)
    seed_df: int  # degrees of freedom of the seed part's t (0: none)
    query_df: int  # G - 1
    seed_measured: bool  # False: one seed, the interval holds no seed variation
    pairing: str = ""


def from_cluster_sums(sums: np.ndarray, sizes: np.ndarray) -> Estimate:
    """The variance-components estimate of each mean over seeds (axis -2) and queries from per-seed cluster sums
    (..., R, G) and cluster sizes (G,)."""
    sums = np.asarray(sums, dtype=np.float64)
    seeds, queries = sums.shape[-2], int(sizes.sum())
    means = sums.sum(axis=-1) / queries  # m_r
    point = means.mean(axis=-1)
    averaged = sums.mean(axis=-2)  # cluster sums of v_q
    query_var = robust_variance(averaged - sizes * point[..., None], queries)  # V_Q
    if seeds < 2:
        zero = np.zeros_like(point)
        return Estimate(point, zero, query_var, zero, zero, 1, 0, sizes.size - 1, False)
    residual = sums - sizes * means[..., None] - averaged[..., None, :] + sizes * point[..., None, None]
    noise = robust_variance(residual, queries).mean(axis=-1) / (seeds - 1)  # V_e / R
    seed_var = means.var(axis=-1, ddof=1)
    return Estimate(point, seed_var / seeds, np.maximum(query_var - noise, 0.0), noise, seed_var, seeds, seeds - 1,
                    sizes.size - 1, True)


def components(values: np.ndarray, clusters: np.ndarray) -> Estimate:
    """The variance-components estimate of each mean of `values` (..., R seeds, N queries); `clusters` (N,) ints."""
    return from_cluster_sums(*cluster_sums(values, clusters))


def unpaired(sums_a: np.ndarray, sums_b: np.ndarray, sizes: np.ndarray) -> Estimate:
    """A - B from each arm's per-seed cluster sums (..., R_A or R_B, G) on the same queries, seeds not paired."""
    a, b = from_cluster_sums(sums_a, sizes), from_cluster_sums(sums_b, sizes)
    point = a.point - b.point
    centred = sums_a.mean(axis=-2) - sums_b.mean(axis=-2) - sizes * point[..., None]
    noise = a.query_noise + b.query_noise
    measured = [e.seed_df for e in (a, b) if e.seed_measured]
    return Estimate(point, a.seed_part + b.seed_part,
                    np.maximum(robust_variance(centred, int(sizes.sum())) - noise, 0.0), noise,
                    a.seed_var + b.seed_var, min(a.seeds, b.seeds), min(measured, default=0), a.query_df,
                    a.seed_measured and b.seed_measured, UNPAIRED)


def _critical(df: int, alpha: np.ndarray | float) -> np.ndarray:
    """t_{df, 1 - alpha/2}; 0 without degrees of freedom (the part it multiplies is then 0)."""
    if np.ndim(alpha) == 0 and df > 0:
        return _t_quantile(int(df), float(alpha))
    return stats.t.ppf(1 - np.asarray(alpha) / 2, df) if df > 0 else np.zeros_like(np.asarray(alpha, float))


@cache
def _t_quantile(df: int, alpha: float) -> np.ndarray:
    """t_{df, 1 - alpha/2}, kept: scipy takes ~1 ms a call, and a sweep's thousands of intervals share a few df."""
    return stats.t.ppf(1 - np.asarray(alpha) / 2, df)


def half_width(est: Estimate, alpha: np.ndarray | float = 1 - CONFIDENCE) -> np.ndarray:
    """Half the two-sided 1 - alpha interval (fraction): each part times its own t, added in quadrature."""
    return np.sqrt(_scaled(est.seed_part, _critical(est.seed_df, alpha))
                   + _scaled(est.query_part, _critical(est.query_df, alpha)))


def _scaled(part: np.ndarray, critical: np.ndarray) -> np.ndarray:
    """critical^2 x part, 0 where the part is (however far out the critical value)."""
    return np.where(part > 0, np.square(critical) * np.where(part > 0, part, 1.0), 0.0)


def interval(est: Estimate) -> tuple[np.ndarray, np.ndarray]:
    """The two-sided 95 % interval (fractions)."""
    width = half_width(est)
    return est.point - width, est.point + width


def point_interval(est: Estimate) -> tuple[np.ndarray, np.ndarray]:
    """A point's two-sided 95 % interval (fractions), within [0, 1]; differences keep `interval`."""
    low, high = interval(est)
    # Scores are fractions, and clipping never lowers coverage of a truth in [0, 1]; t can dip below 0 at 2-3 seeds.
    return np.clip(low, 0.0, 1.0), np.clip(high, 0.0, 1.0)


def p_value(est: Estimate) -> np.ndarray:
    """Two-sided p-value of 'no difference' by test inversion: the smallest alpha whose interval excludes 0."""
    size = np.abs(est.point)
    alpha = 1 - CONFIDENCE
    decided = half_width(est, alpha) < size
    low, high = np.where(decided, 0.0, alpha), np.where(decided, alpha, 1.0)
    for _ in range(60):  # bisection: the half-width falls as alpha grows
        middle = (low + high) / 2
        excluded = half_width(est, middle) < size
        low, high = np.where(excluded, low, middle), np.where(excluded, middle, high)
    found = (low + high) / 2
    # Pinned to its side of alpha, so p < 0.05 exactly when the 95 % interval excludes 0.
    return np.where(decided, np.minimum(found, np.nextafter(alpha, 0)),
                    np.where(size > 0, np.maximum(found, alpha), 1.0))


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p-values, in the order given (monotone in p, capped at 1)."""
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(np.maximum.accumulate((p.size - np.arange(p.size)) * p[order]), 1.0)
    out = np.empty_like(adjusted)
    out[order] = adjusted
    return out


def mdd(est: Estimate) -> np.ndarray:
    """Minimum detectable difference (fraction) at 80 % power, two-sided 5 %: half-width + z_0.8 x the standard
    error, the normal approximation of the power of the t-based test at the estimated standard errors."""
    return half_width(est) + stats.norm.ppf(POWER) * np.sqrt(est.seed_part + est.query_part)


def seeds_needed(est: Estimate, observed: np.ndarray) -> np.ndarray:
    """The fewest seeds R' (2 to MAX_SEEDS) whose MDD is at most |observed|, the seed part scaled to R' seeds with
    t_{R'-1}; NaN where the query part alone keeps it above (more seeds cannot decide it on this test set), where
    more than MAX_SEEDS would be needed, where it is 0, or where the seed variation was not measured."""
    counts = np.arange(2, MAX_SEEDS + 1)
    seed_part = est.seed_var[..., None] / counts
    query_part = est.query_part[..., None]
    found = (np.sqrt(np.square(stats.t.ppf(1 - (1 - CONFIDENCE) / 2, counts - 1)) * seed_part
                     + np.square(_critical(est.query_df, 1 - CONFIDENCE)) * query_part)
             + stats.norm.ppf(POWER) * np.sqrt(seed_part + query_part)) <= np.abs(observed)[..., None]
    detectable = found.any(axis=-1) & est.seed_measured & (np.abs(observed) > 0)  # no seeds detect a zero
    return np.where(detectable, counts[found.argmax(axis=-1)], np.nan)


def p_improve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """P(a run of A scores higher than a run of B) + P(tie) / 2 over all R_A x R_B pairs of per-seed scores
    (R, ...) (rliable's probability of improvement)."""
    diff = a[:, None] - b[None, :]
    return (diff > 0).mean(axis=(0, 1)) + 0.5 * (diff == 0).mean(axis=(0, 1))


@dataclass(frozen=True, eq=False)
class Sample:
    """One configuration's runs on a test set: its seeds, their per-query values (seeds, SCORES, queries) and each
    query's identity cluster (queries,)."""

    seeds: tuple[int, ...]
    values: np.ndarray
    clusters: np.ndarray

    def point(self) -> np.ndarray:
        """Each score: the mean over seeds of each seed's mean over queries (exactly rounded sums), read-only."""
        return self._point

    @cached_property
    def _point(self) -> np.ndarray:
        point = self.per_seed.mean(axis=0)
        point.setflags(write=False)  # shared by every caller: the race asks for it once per rival per round
        return point

    @cached_property
    def per_seed(self) -> np.ndarray:
        """(seeds, SCORES): each seed's mean over queries (exactly rounded sums)."""
        return exact_means(self.values)

    @cached_property
    def sums(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-score, per-seed cluster sums (SCORES, seeds, G) and the cluster sizes (G,)."""
        return cluster_sums(np.moveaxis(self.values, 0, 1), self.clusters)

    @cached_property
    def estimate(self) -> Estimate:
        """The variance-components estimate of each score (SCORES,), at the exactly rounded point."""
        return replace(from_cluster_sums(*self.sums), point=self.point())


def read_sample(runs: list[tuple[int, str]], protocol: str, preset: str | None = None) -> Sample:
    """One configuration's Sample on `protocol` from its runs' per-query files [(seed, path)], seeds ascending (so
    equal seed lists pair up by index); `preset` names the training that rewrites a bad file."""
    runs = sorted(runs)
    found = [table_values(read_queries(path, preset), protocol) for _, path in runs]
    if any(c.shape != found[0][1].shape or not np.array_equal(c, found[0][1]) for _, c in found):
        raise ValueError(f"runs on different query sets ({sorted({c.size for _, c in found})} queries): they are not "
                         f"one configuration's seeds on one test set")
    return Sample(tuple(seed for seed, _ in runs), np.stack([values for values, _ in found]), found[0][1])


def same_test_set(samples: list[Sample]) -> None:
    """Raise ValueError unless every sample holds the same queries in the same identity clusters."""
    first = samples[0].clusters
    if any(s.clusters.shape != first.shape or not np.array_equal(s.clusters, first) for s in samples):
        counts = sorted({len(s.clusters) for s in samples})
        raise ValueError(f"samples on different query sets ({counts} queries): they cannot be paired")


def difference(a: Sample, b: Sample) -> Estimate:
    """A minus B of every score on one test set: paired by seed index when both have the same seed list."""
    same_test_set([a, b])
    (sums_a, sizes), (sums_b, _) = a.sums, b.sums
    if a.seeds == b.seeds:
        est = replace(from_cluster_sums(sums_a - sums_b, sizes), pairing=PAIRED)
    else:
        est = unpaired(sums_a, sums_b, sizes)
    return replace(est, point=a.point() - b.point())


def compare(a: Sample, b: Sample, scores: tuple[str, ...] = FRONT_SCORES) -> dict:
    """A minus B: its pairing and, per score, the difference, its 95 % interval, whether that excludes 0, its
    p-value, P(improvement), the MDD, the seeds that would detect it and the seeds used (fractions)."""
    est = difference(a, b)
    low, high = interval(est)
    p, needed, width = p_value(est), seeds_needed(est, est.point), mdd(est)
    improve = p_improve(a.per_seed, b.per_seed)
    out: dict = {"pairing": est.pairing}
    for name in scores:
        i = SCORES.index(name)
        out[name] = {"diff": float(est.point[i]), "lo": float(low[i]), "hi": float(high[i]),
                     "decided": bool(low[i] > 0 or high[i] < 0), "p": float(p[i]), "p_improve": float(improve[i]),
                     "mdd": float(width[i]), "seeds_needed": None if np.isnan(needed[i]) else int(needed[i]),
                     "seeds": est.seeds}
    return out


def query_interval(values: np.ndarray, clusters: np.ndarray) -> dict[str, list[float]]:
    """One run's 95 % interval over identity-clustered queries of each score ({score: [lo, hi]}, fractions) from its
    `query_values` (SCORES, N) and `query_clusters` (N,); seed variation is not in it."""
    low, high = point_interval(components(values[:, None, :], clusters))
    return {name: [float(low[i]), float(high[i])] for i, name in enumerate(SCORES)}
