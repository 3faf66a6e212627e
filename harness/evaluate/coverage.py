"""python -m harness.evaluate.coverage: how often harness.evaluate.statistics' 95 % intervals hold the truth.

Simulated benchmarks from a known truth, crossed seeds x identity-clustered queries. Arm A's query q of
identity g under seed r has the logit mu + a_r + b_g + c_q; its hit@1 is Bernoulli(sigmoid(logit)), its
AP-like value sigmoid(logit + e_rq) in [0, 1]. Arm B shares the identity and query effects (b_g, c_q: one
test set), is `shift` lower on the logit scale, and its seed effects correlate with A's (rho), as two
configurations trained from the same seeds. Each benchmark draws a fresh test set and fresh seeds.

The truth is the expectation over seeds, identities and queries (and e for AP): the logit is one normal,
so it is a 1-D Gauss-Hermite quadrature of the sigmoid, not a sample mean. A cell is a regime (seeds or
the test set dominate), a query design and a seed count R; its benchmarks simulate 10 seeds, and a cell of
R seeds uses the first R of them (the cells of one design are correlated, each is still a fair sample).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from scipy.special import expit

from harness.evaluate.statistics import CONFIDENCE, Estimate, from_cluster_sums, half_width

SEEDS = (2, 3, 5, 10)
SCORE_NAMES = ("hit@1", "AP")
CHUNK = 100  # benchmarks simulated at once: ~20 MB an array at 10 seeds x 1,980 queries


@dataclass(frozen=True)
class Regime:
    """The simulated truth: logit-scale effects (normal, mean 0 but mu) of seeds, identities, queries and noise."""

    name: str
    mu: float  # arm A's logit of a typical query
    seed_sd: float  # a_r
    identity_sd: float  # b_g
    query_sd: float  # c_q
    noise_sd: float  # e_rq, AP only
    shift: float = 0.2  # arm A minus arm B, logit
    rho: float = 0.5  # correlation of the arms' seed effects


@dataclass(frozen=True)
class Design:
    """A test set's shape: (identities, queries each) blocks."""

    name: str
    blocks: tuple[tuple[int, int], ...]

    @property
    def sizes(self) -> np.ndarray:
        """Queries per identity, identities in order (each identity's queries contiguous)."""
        return np.concatenate([np.full(count, size) for count, size in self.blocks])


REGIMES = (
    # rank-1 ~80 %, seed std ~3.2 points, one run's query SE ~1 point
    Regime("seeds dominate", mu=1.8, seed_sd=0.25, identity_sd=0.8, query_sd=1.0, noise_sd=0.5),
    # as on real MARS: rank-1 ~87 %, seed std ~0.55 points (mostly seed x query noise), query SE ~0.85 points
    Regime("test set dominates", mu=4.5, seed_sd=0.05, identity_sd=2.0, query_sd=3.0, noise_sd=0.5),
)
DESIGNS = (
    Design("default-like: 1,500 queries, 300 identities x 5", ((300, 5),)),
    Design("MARS-like: 1,980 queries, 625 identities x 3-4", ((520, 3), (105, 4))),
)


def expected_sigmoid(mu: float, sd: float, nodes: int = 101) -> float:
    """E[sigmoid(mu + sd Z)], Z standard normal, by Gauss-Hermite quadrature (fraction)."""
    x, w = np.polynomial.hermite_e.hermegauss(nodes)
    return float(w @ expit(mu + sd * x) / np.sqrt(2 * np.pi))


def truths(regime: Regime) -> dict[str, tuple[float, float]]:
    """Per score, the true (A, A - B): expectations over seeds, identities, queries and noise (fractions)."""
    spread = regime.seed_sd**2 + regime.identity_sd**2 + regime.query_sd**2
    out = {}
    for name, variance in zip(SCORE_NAMES, (spread, spread + regime.noise_sd**2)):
        a, b = (expected_sigmoid(mu, np.sqrt(variance)) for mu in (regime.mu, regime.mu - regime.shift))
        out[name] = (a, a - b)
    return out


def simulate(regime: Regime, design: Design, seeds: int, count: int,
             rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per score, both arms' per-query values (2 arms, count benchmarks, seeds, queries), float32 (hits as uint8)."""
    sizes = design.sizes
    z = rng.standard_normal((2, count, seeds, 1), dtype=np.float32)
    seed_effect = regime.seed_sd * np.stack([z[0], regime.rho * z[0] + np.sqrt(1 - regime.rho**2) * z[1]])
    centre = np.array([regime.mu, regime.mu - regime.shift], dtype=np.float32).reshape(2, 1, 1, 1)
    query = (np.repeat(regime.identity_sd * rng.standard_normal((count, sizes.size), dtype=np.float32), sizes, axis=1)
             + regime.query_sd * rng.standard_normal((count, int(sizes.sum())), dtype=np.float32))
    logit = (centre + seed_effect) + query[None, :, None, :]
    hits = rng.random(logit.shape, dtype=np.float32) < expit(logit)
    logit += regime.noise_sd * rng.standard_normal(logit.shape, dtype=np.float32)
    return {"hit@1": hits.view(np.uint8), "AP": expit(logit, out=logit)}


def chunk_sums(regime: Regime, design: Design, count: int, seed: int) -> Iterator[dict[str, np.ndarray]]:
    """Per chunk of benchmarks, per score, both arms' per-seed cluster sums (2, chunk, max(SEEDS), G), float64."""
    starts = np.r_[0, np.cumsum(design.sizes)[:-1]]
    for first in range(0, count, CHUNK):
        rng = np.random.default_rng([seed, REGIMES.index(regime), DESIGNS.index(design), first])
        values = simulate(regime, design, max(SEEDS), min(CHUNK, count - first), rng)
        # Each identity's queries are contiguous: the cluster sums are one reduceat.
        yield {name: np.add.reduceat(v, starts, axis=-1).astype(np.float64) for name, v in values.items()}


def covered(est: Estimate, truth: float) -> np.ndarray:
    """Bool per benchmark: the 95 % interval holds the truth."""
    return np.abs(est.point - truth) <= half_width(est)


def cell_rows(regime: Regime, design: Design, count: int, seed: int) -> list[dict]:
    """One row per seed count R: coverage (fraction) of the point and the difference per score, the mean
    half-width of the point (fraction), and what the regime gives at R = 10: seed std and one run's query SE."""
    sizes, truth = design.sizes, truths(regime)
    hits = {(r, kind, name): 0 for r in SEEDS for kind in ("point", "difference") for name in SCORE_NAMES}
    width = {(r, name): 0.0 for r in SEEDS for name in SCORE_NAMES}
    spread = {name: np.zeros(2) for name in SCORE_NAMES}
    for sums in chunk_sums(regime, design, count, seed):
        for name, (a, b) in sums.items():
            for r in SEEDS:
                point = from_cluster_sums(a[:, :r], sizes)
                hits[r, "point", name] += int(covered(point, truth[name][0]).sum())
                hits[r, "difference", name] += int(covered(from_cluster_sums(a[:, :r] - b[:, :r], sizes),
                                                           truth[name][1]).sum())
                width[r, name] += float(half_width(point).sum())
            one_run = from_cluster_sums(a[:, :1], sizes).query_part
            spread[name] += [(a.sum(axis=-1) / sizes.sum()).std(axis=-1, ddof=1).sum(), np.sqrt(one_run).sum()]
    return [{"regime": regime.name, "design": design.name, "seeds": r,
             **{f"{kind} {name}": hits[r, kind, name] / count for kind in ("point", "difference")
                for name in SCORE_NAMES},
             **{f"half-width {name}": width[r, name] / count for name in SCORE_NAMES},
             **{f"{what} {name}": spread[name][i] / count for name in SCORE_NAMES
                for i, what in enumerate(("seed std", "query SE"))}} for r in SEEDS]


def table(count: int = 2000, seed: int = 0) -> list[dict]:
    """Every cell's row: regimes x designs x SEEDS, `count` benchmarks each."""
    return [row for regime in REGIMES for design in DESIGNS for row in cell_rows(regime, design, count, seed)]


def markdown(rows: list[dict], count: int, seed: int) -> str:
    """The coverage table (percent) with the simulation's parameters, as markdown."""
    mc = 100 * np.sqrt(CONFIDENCE * (1 - CONFIDENCE) / count)
    lines = [f"Coverage of the harness's {100 * CONFIDENCE:.0f} % intervals: {count:,} simulated benchmarks a cell "
             f"(seed {seed}); Monte Carlo standard error ~{mc:.1f} points at 95 %.", "",
             "| regime | mu | seed sd | identity sd | query sd | AP noise sd | B shift | rho | truth hit@1 / AP (%) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for g in REGIMES:
        truth = truths(g)
        lines.append(f"| {g.name} | {g.mu} | {g.seed_sd} | {g.identity_sd} | {g.query_sd} | {g.noise_sd} | {g.shift} "
                     f"| {g.rho} | {100 * truth['hit@1'][0]:.2f} / {100 * truth['AP'][0]:.2f} |")
    lines += ["", "Effects on the logit scale. Below, coverage in percent; 'half-width' is the mean half-width of a "
                  "point's interval, 'seed std' the std over 10 seeds of a seed's score, 'query SE' one run's "
                  "identity-clustered standard error (points, means over benchmarks).", "",
              "| regime | design | R | point hit@1 | point AP | difference hit@1 | difference AP "
              "| half-width hit@1 / AP | seed std hit@1 / AP | query SE hit@1 / AP |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['regime']} | {r['design']} | {r['seeds']} | "
                     + " | ".join(f"{100 * r[f'{k} {n}']:.1f}" for k in ("point", "difference") for n in SCORE_NAMES)
                     + " | " + " | ".join(f"{100 * r[f'{w} hit@1']:.2f} / {100 * r[f'{w} AP']:.2f}"
                                          for w in ("half-width", "seed std", "query SE")) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the coverage table as markdown."""
    parser = argparse.ArgumentParser(prog="python -m harness.evaluate.coverage", description=__doc__.splitlines()[0])
    parser.add_argument("--benchmarks", type=int, default=2000, help="simulated benchmarks per cell (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulation (default 0)")
    args = parser.parse_args(argv)
    print(markdown(table(args.benchmarks, args.seed), args.benchmarks, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
