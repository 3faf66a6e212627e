"""The group-sequential test (harness.evaluate.sequential) measured on benchmarks with a known truth: its false
decisions with no true difference, against re-testing the fixed 95 % interval after every seed, and its power and
mean seeds at a planned difference, on benchmarks simulated by harness.evaluate.coverage (crossed seeds x
identity-clustered queries).

`python -m harness.evaluate.sequential_sim` prints a plan's looks and levels; with --simulate N, the measured numbers
of docs/sequential.md.
"""

from __future__ import annotations

import argparse
import time
import zlib
from dataclasses import replace

import numpy as np
from scipy import stats

from harness.evaluate.coverage import CHUNK, REGIMES, Design, Regime, simulate, truths
from harness.evaluate.sequential import Plan, boundaries, operating, plan_for, run
from harness.evaluate.statistics import Estimate, from_cluster_sums, half_width, seeds_needed

SIM_DESIGN = Design("300 queries, 60 identities x 5", ((60, 5),))  # small: the test runs thousands of benchmarks
SIM_PLAN = Plan(2, 10)
CASES = ("paired arms", "arms differ by identity")


def simulated(regime: Regime, design: Design, seeds: int, count: int, seed: int) -> np.ndarray:
    """Both arms' per-seed cluster sums (2 arms, 2 scores: hit@1 and AP, count, seeds, G) of simulated benchmarks."""
    starts = np.r_[0, np.cumsum(design.sizes)[:-1]]
    chunks = []
    for first in range(0, count, CHUNK):
        rng = np.random.default_rng([seed, zlib.crc32(regime.name.encode()), first])
        values = simulate(regime, design, seeds, min(CHUNK, count - first), rng)
        chunks.append(np.stack([np.add.reduceat(v, starts, axis=-1, dtype=np.float64) for v in values.values()], 1))
    return np.concatenate(chunks, axis=2)


def ladder(differences: np.ndarray, sizes: np.ndarray, looks: tuple[int, ...]) -> list[Estimate]:
    """The paired difference's Estimate at each of `looks` from its per-seed cluster sums (..., seeds, G)."""
    return [from_cluster_sums(differences[..., :n, :], sizes) for n in looks]


def false_decisions(regime: Regime, count: int, seed: int = 0, plan: Plan = SIM_PLAN) -> dict[str, dict]:
    """Per case of CASES, with no true difference: the fraction of benchmarks decided (hit@1, AP) by the plan, by
    the plan ignoring futility and by the fixed 95 % interval re-tested at every look, and the plan's mean seeds."""
    a, b = simulated(replace(regime, shift=0.0), SIM_DESIGN, plan.max_seeds, count, seed)
    out = {}
    # Arm B from another benchmark's arm A: the arms differ by identity, truth 0, the test set's part dominates.
    for case, diff in zip(CASES, (a - b, a - np.roll(a, 1, axis=1))):
        ests = ladder(diff, SIM_DESIGN.sizes, plan.looks)
        right, seeds = run(plan, ests, 0.0)
        fixed = np.array([np.abs(e.point) > half_width(e) for e in ests])
        out[case] = {"sequential": right.mean(axis=-1), "no futility": run(plan, ests, 0.0, False)[0].mean(axis=-1),
                     "naive": fixed.any(axis=0).mean(axis=-1), "naive from 3": fixed[1:].any(axis=0).mean(axis=-1),
                     "seeds": seeds.mean(axis=-1)}
    return out


def normal_seeds(plan: Plan, draws: int, seed: int = 0) -> tuple[float, float]:
    """The fraction of simulated normal per-seed differences with no true difference (no test-set part) that the plan
    decides ignoring futility, and that it would decide with its z_k converted to t levels instead."""
    x = np.random.default_rng(seed).standard_normal((plan.max_seeds, draws))
    n = np.arange(1, plan.max_seeds + 1)[:, None]
    sums, squares = x.cumsum(axis=0), np.square(x).cumsum(axis=0)
    looks = np.array(plan.looks) - 1
    t = np.abs(sums / n)[looks] / np.sqrt((squares - sums**2 / n)[looks] / (n[looks] * (n[looks] - 1)))
    df = np.array(plan.looks)[:, None] - 1
    converted = 2 * stats.norm.sf(boundaries(tuple(np.array(plan.looks) / plan.max_seeds), plan.alpha))
    return tuple(float((t > stats.t.isf(np.asarray(levels)[:, None] / 2, df)).any(axis=0).mean())
                 for levels in (plan.levels, converted))


def truth_of(ests: Estimate) -> Estimate:
    """The variance components of a regime: the mean over simulated benchmarks of their estimates (scalars)."""
    return replace(ests, **{k: np.float64(getattr(ests, k).mean())
                            for k in ("point", "seed_part", "query_part", "query_noise", "seed_var")})


def power(regime: Regime, shift: float, count: int, seed: int = 0, seeds: int = 12) -> dict:
    """At a true hit@1 difference (the regime with this logit shift): the fixed design `seeds_needed` picks from the
    regime's components and its measured power, and `plan_for`'s plan with its measured power and mean seeds."""
    a, b = simulated(replace(regime, shift=shift), SIM_DESIGN, seeds, count, seed)
    diff = (a - b)[0]
    truth = truth_of(from_cluster_sums(diff, SIM_DESIGN.sizes))
    delta = truths(replace(regime, shift=shift))["hit@1"][1]
    fixed = int(seeds_needed(truth, np.asarray(delta)))
    at_fixed = from_cluster_sums(diff[:, :fixed], SIM_DESIGN.sizes)
    plan = plan_for(truth, delta)
    if plan is None or plan.max_seeds > seeds:
        raise ValueError(f"the plan needs {plan and plan.max_seeds} seeds, more than the {seeds} simulated")
    right, used = run(plan, ladder(diff, SIM_DESIGN.sizes, plan.looks), delta)
    return {"delta": delta, "seed sd": float(np.sqrt(truth.seed_var)), "query SE": float(np.sqrt(truth.query_part)),
            "fixed seeds": fixed, "fixed power": float((at_fixed.point > half_width(at_fixed)).mean()),
            "max seeds": plan.max_seeds, "power": float(right.mean()), "mean seeds": float(used.mean()),
            "model": operating(plan, truth, delta)}


def report(count: int, seed: int) -> str:
    """The measured false decisions and power as markdown."""
    lines = [f"Simulated benchmarks ({count:,} a regime; {SIM_DESIGN.name}; seed {seed}), plan: looks at "
             f"{SIM_PLAN.looks[0]}..{SIM_PLAN.max_seeds} seeds per arm. With no true difference, the fraction decided "
             f"(hit@1 / AP, percent) and the plan's mean seeds per arm:", "",
             "| regime | case | sequential | ignoring futility | fixed 95 % at every look | the same from 3 seeds "
             "| mean seeds |", "|---|---|---|---|---|---|---|"]
    for regime in REGIMES:
        for case, row in false_decisions(regime, count, seed).items():
            lines.append(f"| {regime.name} | {case} | " + " | ".join(
                " / ".join(f"{100 * v:.1f}" for v in row[k]) for k in ("sequential", "no futility", "naive",
                                                                      "naive from 3"))
                + " | " + " / ".join(f"{v:.2f}" for v in row["seeds"]) + " |")
    exact, converted = normal_seeds(SIM_PLAN, 20 * count, seed)
    lines += ["", f"Normal per-seed differences, no test-set part ({20 * count:,} draws): decided {100 * exact:.2f} % "
                  f"with the exact t levels, {100 * converted:.2f} % with z_k converted to t levels."]
    found = power(REGIMES[0], 0.4, count, seed)
    lines += ["", f"Power at a true hit@1 difference of {100 * found['delta']:.2f} points ({REGIMES[0].name}, seed sd "
              f"{100 * found['seed sd']:.2f}, query SE {100 * found['query SE']:.2f} points): the fixed design's "
              f"{found['fixed seeds']} seeds per arm decide {100 * found['fixed power']:.1f} %; the plan's max_seeds "
              f"{found['max seeds']} decides {100 * found['power']:.1f} % with {found['mean seeds']:.2f} seeds per arm "
              f"on average (its normal model: {100 * found['model'].power:.1f} %, {found['model'].seeds:.2f})."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print a plan's looks with their critical values and nominal levels; with --simulate, the measured numbers."""
    parser = argparse.ArgumentParser(prog="python -m harness.evaluate.sequential_sim", description=__doc__.splitlines()[0])
    parser.add_argument("--first", type=int, default=2, help="seeds per arm at the first look (default 2)")
    parser.add_argument("--max-seeds", type=int, default=10, help="seeds per arm at the last look (default 10)")
    parser.add_argument("--step", type=int, default=1, help="seeds per arm added between looks (default 1)")
    parser.add_argument("--simulate", type=int, metavar="BENCHMARKS", help="simulate this many benchmarks a regime")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulation (default 0)")
    args = parser.parse_args(argv)
    if args.simulate:
        started = time.perf_counter()
        print(report(args.simulate, args.seed) + f"\n\n({time.perf_counter() - started:.0f} s)")
        return 0
    try:
        plan = Plan(args.first, args.max_seeds, args.step)
    except ValueError as e:
        parser.error(str(e))
    critical = boundaries(tuple(n / plan.max_seeds for n in plan.looks), plan.alpha)
    print(f"{'seeds':>6}{'fraction':>10}{'z':>8}{'alpha (z)':>12}{'alpha (t, seeds - 1 df)':>25}")
    for seeds, z, level in zip(plan.looks, critical, plan.levels):
        print(f"{seeds:>6}{seeds / plan.max_seeds:>10.3f}{z:>8.3f}{2 * stats.norm.sf(z):>12.3g}{level:>25.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
