"""Deciding a paired difference round by round: a group-sequential test that stays valid however often it looks.

Re-testing a difference with the fixed 95 % interval after every new seed decides a zero difference far more
often than 5 % (~17-19 % over looks at 2..10 seeds, docs/sequential.md). Here every look spends part of a
two-sided alpha = 0.05 by the Lan-DeMets O'Brien-Fleming-type function, at alpha / 2 on each side as gsDesign and
rpact spend it: spent(t) = 2 (2 - 2 Phi(z_{1-alpha/4} / sqrt(t))).

- Looks are seed counts per arm: `Plan(first, max_seeds, step)` looks at first, first + step, ..., max_seeds.
- Information fraction t_k = n_k / max_seeds, the seed fraction. On one test set the estimate at n seeds is
  theta + Q + the mean of n seed effects, Q the test set's part shared by every look, so its true fraction is
  (seed_var / N + V_q) / (seed_var / n + V_q) >= n / N: the looks are more correlated than the seed fraction
  assumes, which only lowers the false-decision rate (measured with arms that differ by identity), and the seed
  fraction needs no estimated variance, so a look's level never moves once used.
- `boundaries`: the critical values z_k of known-variance looks, P(|Z_j| < z_j for j < k, |Z_k| >= z_k) =
  spent(t_k) - spent(t_{k-1}) under the canonical joint distribution (corr(Z_j, Z_k) = sqrt(t_j / t_k)), by the
  recursive numerical integration of Armitage, McPherson and Rowe on Jennison & Turnbull's grid (ch. 19).
- `t_levels`: the seed part is estimated on 1-9 degrees of freedom, and converting z_k to a t level (Jennison &
  Turnbull's 'significance level approach') decided a zero difference 5.6-5.7 % of the time over looks at 2..5-20
  seeds: each look's own variance estimate makes the looks' t statistics less correlated than the Z's. So the levels
  come from the same spending applied to the one-sample t statistics themselves, integrated exactly (a 1-D Markov
  chain, below). Both hand-written: no maintained Python library computes group-sequential boundaries (gsDesign and
  rpact are R packages).
- A look decides when its repeated confidence interval, point +/- half_width(est, alpha_k) at the look's nominal
  level alpha_k, excludes 0: each variance part with its own t, as everywhere in the harness (exact for the seed
  part; the query part's t on G - 1 degrees of freedom is then conservative).
- Futility (non-binding: it only withholds decisions): before the last look, stop when the predictive probability
  that max_seeds decide is below FUTILITY_POWER: the final point predicted from this one (the test set's part
  shared, the seed part's sd sqrt(seed_var (N - n) / (N n)), t on n - 1 df) against the final half-width (the
  current variance components at max_seeds, seed part seed_var / N, query part as is; the last look's level).
- `plan_for` picks max_seeds for 80 % power at a planned difference: the fixed design's seeds (`seeds_needed`),
  raised until a simulation from a normal model of the variance components reaches it.

`python -m harness.evaluate.sequential_sim` prints a plan's levels and, with --simulate, the false decisions and the
power measured on simulated benchmarks (harness/evaluate/sequential_sim.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache

import numpy as np
from scipy import optimize, stats
from scipy.special import betainc, ndtr

from harness.evaluate.statistics import POWER, Estimate, half_width, seeds_needed

ALPHA = 0.05
VERDICTS = ("decided", "futile", "budget", "continue")
# Predictive probability of a decision at max_seeds below which a look stops as futile. 0.5 is the plain rule
# "max_seeds would not decide the observed difference": it stops early points that scatter low, and `plan_for`
# needed 26 seeds for 80 % power where the fixed design needs 8; 0.1 needed 54 where it needs 43 (looks at every
# seed: futility's chances add up); 0.05 needs 9 and 49 (docs/sequential.md).
FUTILITY_POWER = 0.05
GRID = 16  # Jennison & Turnbull's r, ~12 r points a look: boundaries within 3e-5 of r = 128's at 20 looks
CAP = 38.0  # a critical value that nothing crosses in float64 (P(|Z| > 38) underflows): where nothing is spent
PLAN_DRAWS = 20_000  # simulated benchmarks of the normal model behind `operating` and `plan_for`
PLAN_LIMIT = 1000  # the most seeds `plan_for` considers


def spent(fraction: np.ndarray | float, alpha: float = ALPHA) -> np.ndarray:
    """The two-sided alpha spent by information fraction t: O'Brien-Fleming type at alpha / 2 on each side."""
    return 4 * stats.norm.sf(stats.norm.isf(alpha / 4) / np.sqrt(fraction))


def _grid(bound: float, r: int = GRID) -> tuple[np.ndarray, np.ndarray]:
    """Jennison & Turnbull's points on (-bound, bound) for a standard normal Z (dense near 0, sparse in the tails)
    with their midpoints, and the Simpson weights of the result."""
    i = np.arange(1, 6 * r)
    x = np.where(i < r, -3 - 4 * np.log(r / i),
                 np.where(i <= 5 * r, -3 + 3 * (i - r) / (2 * r), 3 + 4 * np.log(r / (6 * r - i))))
    ends = np.r_[-bound, x[np.abs(x) < bound], bound]
    z = np.empty(2 * ends.size - 1)
    z[0::2], z[1::2] = ends, (ends[:-1] + ends[1:]) / 2
    width = np.diff(ends)
    w = np.zeros_like(z)
    w[1::2] = 4 * width / 6
    w[0:-1:2] += width / 6
    w[2::2] += width / 6
    return z, w


@lru_cache(maxsize=256)
def boundaries(fractions: tuple[float, ...], alpha: float = ALPHA) -> tuple[float, ...]:
    """The two-sided critical values z_k (standard normal) of looks at increasing information fractions that
    spend `spent(t_k) - spent(t_{k-1})` at look k; spent in full when the last fraction is 1."""
    t = np.asarray(fractions, dtype=np.float64)
    if t.size == 0 or np.any(np.diff(t) <= 0) or t[0] <= 0 or t[-1] > 1:
        raise ValueError(f"information fractions must increase within (0, 1], got {fractions}")
    spend = np.diff(np.r_[0.0, spent(t, alpha)])
    found = [min(float(stats.norm.isf(spend[0] / 2)), CAP)]
    z, w = _grid(found[0])
    density = w * np.exp(-z**2 / 2) / np.sqrt(2 * np.pi)  # Z_1's density on (-z_1, z_1) times the weights
    for k in range(1, t.size):
        before, now, step = np.sqrt(t[k - 1]), np.sqrt(t[k]), np.sqrt(t[k] - t[k - 1])

        # Z_k sqrt(t_k) = Z_{k-1} sqrt(t_{k-1}) + N(0, t_k - t_{k-1}): the score's increments are independent.
        def excess(c: float) -> float:
            return float(density @ (ndtr((z * before - c * now) / step) + ndtr((-z * before - c * now) / step))
                         - spend[k])

        found.append(optimize.brentq(excess, 0.0, CAP, xtol=1e-12) if excess(CAP) < 0 else CAP)
        if k + 1 < t.size:
            nxt, weights = _grid(found[-1])
            kernel = np.exp(-np.square(nxt[:, None] * now - z[None, :] * before) / (2 * step**2))
            density = weights * (kernel @ density) * now / (step * np.sqrt(2 * np.pi))
            z = nxt
    return tuple(found)


# The seed part's t: for normal per-seed differences with no true difference, V_n = S_n / sqrt(Q_n) (sum and sum of
# squares of n seeds) is a Markov chain: adding a seed, V_n = V_{n-1} cos(theta) + sin(theta), theta independent of
# the past with density ~ cos^(n-2) on (-pi/2, pi/2) (sin^2 theta = x_n^2 / Q_n ~ Beta(1/2, (n-1)/2), and Q_{n-1} is
# independent of the direction of the earlier seeds, which fixes V_1..V_{n-1}), and |T_n| = |V_n| sqrt((n - 1) /
# (n - V_n^2)) is the one-sample t statistic. Integrating that chain as the Z's above gives the exact group-sequential
# t-test in one dimension (Jennison & Turnbull 1991 integrate mean and variance, two).
CELLS = 400  # cells of the chain's state, even in angle: levels within 0.6 % of 1,600 cells' up to 50 seeds
ANGLES = 2**14  # points of each seed count's tabulated angle distribution
TAIL = 1e-12  # one-sided tail of the t statistic the chain leaves out
BRACKETS = 64  # grid that brackets each look's boundary before brentq refines it


@lru_cache(maxsize=1024)
def _angle_table(n: int) -> np.ndarray:
    """2 P(0 <= theta <= u) for theta of density ~ cos^(n-2) on (-pi/2, pi/2), u = linspace(0, pi/2, ANGLES + 1)."""
    return betainc(0.5, (n - 1) / 2, np.sin(np.linspace(0, np.pi / 2, ANGLES + 1)) ** 2)


def _angle_cdf(theta: np.ndarray, n: int) -> np.ndarray:
    """P(angle <= theta) of the chain's step to n seeds."""
    table = _angle_table(n)
    at = np.abs(theta) * (ANGLES / (np.pi / 2))  # linear interpolation on the even grid, without a search
    index = np.minimum(at.astype(np.intp), ANGLES - 1)
    half = table[index] + (at - index) * (table[index + 1] - table[index])
    return 0.5 + np.sign(theta) * half / 2


def _upper(v: np.ndarray, b: np.ndarray | float, n: int) -> np.ndarray:
    """P(V_n >= b | V_{n-1} = v) for b >= 0: v cos(theta) + sin(theta) = r sin(theta + phi) with r = sqrt(1 + v^2)."""
    sine = np.arcsin(np.minimum(b / np.sqrt(1 + v * v), 1.0))
    phi = np.arctan(v)
    low = np.minimum(sine - phi, np.pi / 2)
    high = np.minimum(np.pi - sine - phi, np.pi / 2)
    return np.maximum(_angle_cdf(high, n) - _angle_cdf(low, n), 0.0)


@lru_cache(maxsize=256)
def t_levels(looks: tuple[int, ...], max_seeds: int, alpha: float = ALPHA) -> tuple[float, ...]:
    """The nominal two-sided levels of the exact group-sequential one-sample t-test of normal per-seed differences
    with looks at `looks` seeds (increasing, >= 2), spending spent(n / max_seeds) by look n."""
    spend = np.diff(np.r_[0.0, spent(np.asarray(looks) / max_seeds, alpha)])
    # The state's distribution is symmetric about 0 (so is every step and the truncation): its cells' centres v and
    # masses are mirror images, and each step computes the cells above 0 only.
    v, mass = np.array([-1.0, 1.0]), np.array([0.5, 0.5])  # one seed: V_1 = sign(x_1)
    levels = []
    for n in range(2, looks[-1] + 1):
        # Past |T| = t_{n-1, 1 - TAIL} lies mass too small to count: the cells stay where the mass is as seeds grow.
        far = stats.t.isf(TAIL, n - 1)
        top = far * np.sqrt(n / (n - 1 + far * far))
        if n in looks:
            left = spend[len(levels)]

            def excess(b: np.ndarray | float) -> np.ndarray:
                return 2 * _upper(v[None, :], np.atleast_1d(b)[:, None], n) @ mass - left

            # Bracket the boundary on a grid in one call, then refine: Python's overhead per call is the cost here.
            grid = np.linspace(0.0, np.sqrt(n), BRACKETS + 1)
            below = np.flatnonzero(excess(grid) < 0)  # nothing spent (left == 0): keep the cells' far end
            if below.size:
                at = max(below[0], 1)
                top = optimize.brentq(lambda b: float(excess(b)[0]), grid[at - 1], grid[at], xtol=1e-12)
            t = top * np.sqrt((n - 1) / max(n - top * top, 1e-300))
            levels.append(float(2 * stats.t.sf(t, n - 1)))
        # Cells even in the angle of the seeds to (1, ..., 1), V_n = sqrt(n) cos(angle): near-ties crowd V_n at
        # +-sqrt(n) with a density smooth in the angle, not in V_n.
        angles = np.linspace(0, 1, CELLS // 2 + 1) * np.arcsin(min(top / np.sqrt(n), 1.0))
        half = -np.diff(_upper(v[None, :], np.sqrt(n) * np.sin(angles)[:, None], n), axis=0) @ mass
        centres = np.sqrt(n) * np.sin((angles[:-1] + angles[1:]) / 2)
        v, mass = np.r_[-centres[::-1], centres], np.r_[half[::-1], half]
    return tuple(levels)


@dataclass(frozen=True)
class Plan:
    """The group-sequential design: looks at first, first + step, ..., max_seeds seeds per arm; two-sided alpha."""

    first: int
    max_seeds: int
    step: int = 1
    alpha: float = ALPHA

    def __post_init__(self) -> None:
        if self.first < 2 or self.max_seeds < self.first or self.step < 1 or not 0 < self.alpha < 1:
            raise ValueError(f"a plan needs 2 <= first <= max_seeds, step >= 1 and 0 < alpha < 1, got {self}")

    @property
    def looks(self) -> tuple[int, ...]:
        """The seed counts per arm at which the plan looks; the last is max_seeds."""
        return (*range(self.first, self.max_seeds, self.step), self.max_seeds)

    @cached_property
    def levels(self) -> tuple[float, ...]:
        """Each look's nominal two-sided level: the exact group-sequential t-test's (`t_levels`)."""
        return t_levels(self.looks, self.max_seeds, self.alpha)

    def level(self, seeds: int) -> float:
        """The nominal two-sided alpha spent at the look at `seeds` (the largest look <= seeds; 0 before the first)."""
        at = int(np.searchsorted(self.looks, seeds, side="right")) - 1
        return self.levels[at] if at >= 0 else 0.0


@dataclass(frozen=True)
class Look:
    """One look's verdict (on one score) and every score's repeated confidence interval (fractions)."""

    seeds: int
    verdict: str  # one of VERDICTS
    level: float  # nominal two-sided alpha of the interval
    point: np.ndarray
    low: np.ndarray
    high: np.ndarray


def at_seeds(est: Estimate, seeds: int) -> Estimate:
    """`est` as it would be at `seeds` seeds per arm: the seed part seed_var / seeds on seeds - 1 degrees of freedom,
    the query part as is."""
    return replace(est, seed_part=est.seed_var / seeds, seeds=seeds, seed_df=seeds - 1)


def verdicts(plan: Plan, est: Estimate) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """The look at est.seeds: its level, the repeated interval's half-width (fraction) and, elementwise over est's
    arrays, whether it decides and whether it stops as futile (never at or after the last look)."""
    level = plan.level(est.seeds)
    width = half_width(est, level) if level > 0 else np.full_like(est.point, np.inf)
    # A seed variance of 0 is seeds that tie (hit@k's per-seed differences are multiples of 1 / queries: 2 seeds
    # tie ~5 % of the time), not a measured 0: it would make the far-out t of an early look multiply nothing.
    measured = est.seed_measured & (est.seed_var > 0)
    decided = (np.abs(est.point) > width) & measured
    if level == 0 or est.seeds >= plan.max_seeds or not est.seed_measured:
        return level, width, decided, np.zeros_like(decided)
    final = half_width(at_seeds(est, plan.max_seeds), plan.level(plan.max_seeds))
    # The final point predicted from this look: this point, the test set's part shared, the seed part's sd
    # sqrt(seed_var (N - n) / (N n)), with the t of the seed variance's n - 1 degrees of freedom.
    spread = np.sqrt(est.seed_var * (plan.max_seeds - est.seeds) / (plan.max_seeds * est.seeds))
    futile = np.abs(est.point) < final + stats.t.ppf(FUTILITY_POWER, est.seeds - 1) * spread
    return level, width, decided, futile & ~decided & measured


def look(plan: Plan, est: Estimate, score: int = 0) -> Look:
    """The look at est.seeds seeds per arm at the paired difference `est` (scalars, or 1-D over scores): the verdict
    on est's element `score` (0, the primary, by default) and every score's repeated interval. 'budget': the last
    look reached undecided; before the first look 'continue', level 0 and an infinite interval."""
    if np.ndim(est.point) > 1:
        raise ValueError(f"one look is of one comparison: scores as a 1-D array, got shape {np.shape(est.point)}")
    level, width, decided, futile = verdicts(plan, est)
    one = (lambda a: a[score]) if np.ndim(est.point) else (lambda a: a)
    if one(decided):
        verdict = "decided"
    elif one(futile):
        verdict = "futile"
    else:
        verdict = "budget" if est.seeds >= plan.max_seeds else "continue"
    return Look(est.seeds, verdict, level, est.point, est.point - width, est.point + width)


def run(plan: Plan, estimates: Iterable[Estimate], delta: float,
        futility: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Run `plan` over estimates at its looks, in order (arrays over benchmarks): per benchmark, whether it decides in
    delta's direction (any decision when delta is 0) and the seeds per arm at its stop; `futility` False runs on
    through futile looks."""
    stopped = right = seeds = None
    for n, est in zip(plan.looks, estimates, strict=True):
        if stopped is None:
            stopped, right = np.zeros(np.shape(est.point), bool), np.zeros(np.shape(est.point), bool)
            seeds = np.full(np.shape(est.point), plan.max_seeds)
        _, _, decided, futile = verdicts(plan, est)
        stop = decided | (futile & futility)
        right |= decided & ~stopped & ((np.sign(est.point) == np.sign(delta)) if delta else True)
        seeds = np.where(~stopped & stop, n, seeds)
        stopped |= stop
    return right, seeds


def normal_model(est: Estimate, looks: tuple[int, ...], delta: float, draws: int,
                 rng: np.random.Generator) -> Iterator[Estimate]:
    """Simulated paired differences at `looks` seeds per arm (draws each), true difference delta (fraction), with the
    variance components of the scalar `est`: normal seed effects (variance est.seed_var) and a test-set part shared
    by every look (variance est.query_part, re-estimated on est.query_df degrees of freedom)."""
    df = max(est.query_df, 1)
    shared = delta + np.sqrt(est.query_part) * rng.standard_normal(draws)
    estimated = est.query_part * rng.chisquare(df, draws) / df
    total, squares, done = np.zeros(draws), np.zeros(draws), 0
    for n in looks:
        # Running sums over seeds: memory stays one array per draw however many seeds.
        effects = np.sqrt(est.seed_var) * rng.standard_normal((n - done, draws))
        total, squares, done = total + effects.sum(axis=0), squares + np.square(effects).sum(axis=0), n
        seed_var = np.maximum(squares - total**2 / n, 0.0) / max(n - 1, 1)
        yield replace(est, point=shared + total / n, seed_part=seed_var / n, query_part=estimated, seed_var=seed_var,
                      seeds=n, seed_df=n - 1, seed_measured=n > 1)


@dataclass(frozen=True)
class Operating:
    """A plan's operating characteristics at a true difference."""

    power: float  # fraction of benchmarks decided in the true difference's direction (any, at no difference)
    seeds: float  # mean seeds per arm at the stop: decided, futile or the last look


def operating(plan: Plan, est: Estimate, delta: float, draws: int = PLAN_DRAWS, seed: int = 0) -> Operating:
    """Power and mean seeds of `plan` at true difference delta (fraction) under the normal model of the scalar
    `est`'s variance components (`normal_model`), deterministic in `seed`."""
    right, seeds = run(plan, normal_model(est, plan.looks, delta, draws, np.random.default_rng(seed)), delta)
    return Operating(float(right.mean()), float(seeds.mean()))


def plan_for(est: Estimate, delta: float, first: int = 2, step: int = 1, power: float = POWER) -> Plan | None:
    """The plan with the fewest max_seeds whose simulated power at delta (fraction) is at least `power`, from the
    fixed design's seeds up; None where no number of seeds up to PLAN_LIMIT detects delta on this test set."""
    fixed = seeds_needed(est, np.asarray(delta))
    if np.isnan(fixed):
        return None

    def enough(seeds: int) -> bool:
        return operating(Plan(first, seeds, step), est, delta).power >= power

    low, high = max(int(fixed), first) - 1, max(int(fixed), first)
    while not enough(high):  # gallop up, then bisect: power grows with max_seeds (common random numbers)
        if high >= PLAN_LIMIT:
            return None
        low, high = high, min(PLAN_LIMIT, 2 * high - low)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    return Plan(first, high, step)
