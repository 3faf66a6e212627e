"""python -m harness.plan: how many seeds, and how much training time, a paired comparison of two presets needs.

It reads two folders of run records with their per-query outcomes (seed<k>.json and seed<k>.queries.parquet, as
`python -m harness.train --all-seeds --out DIR` writes them), pairs the seeds both arms share and measures, for
rank-1 and mAP, what the difference's uncertainty is made of: each arm's seed-to-seed std, how the arms' per-seed
scores correlate, and the test set's part, which no number of seeds removes. From these (harness.evaluate.statistics
and harness.evaluate.sequential):

- --delta POINTS: seeds per arm for 80 % power at that difference, for the fixed design and for the sequential plan
  (its max_seeds, and the seeds it uses on average), and the training time that costs on the recorded hardware;
- --budget-hours H: the seeds per arm H hours of training buy, and the smallest difference they resolve;
- --max-seeds N: the smallest difference N seeds resolve, and the sequential look at the seeds trained so far.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from datasets.errors import command_parser
from harness.cli import run
from harness.errors import UserError
from harness.evaluate.queries import queries_path
from harness.evaluate.sequential import Plan, at_seeds, look, operating, plan_for
from harness.evaluate.statistics import (POWER, SCORES, Estimate, Sample, difference, mdd, read_sample, same_test_set,
                                         seeds_needed)
from harness.results.records import read_record

REPORTED = {"rank1": "rank-1", "map": "mAP"}  # the scores planned for, by their SCORES names
FIRST_LOOK = 2  # seeds per arm at the sequential plan's first look
EXAMPLES = ["python -m harness.plan reports/runs/baseline reports/runs/nvan --delta 2",
            "python -m harness.plan reports/runs/baseline reports/runs/nvan --budget-hours 10",
            "python -m harness.plan reports/runs/baseline reports/runs/nvan --max-seeds 12"]


@dataclass(frozen=True)
class Arm:
    """One preset's runs: its folder, label, per-query sample over its seeds, mean training seconds per seed and the
    hardware they trained on."""

    folder: Path
    label: str
    sample: Sample
    seconds: float | None
    hardware: str


def read_arm(folder: Path) -> Arm:
    """The arm of the run records in `folder` (*.json, per-query outcomes beside each), its seeds in order."""
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder of run records; give the folder `python -m harness.train "
                        f"--all-seeds --out DIR` or `dvc repro train@<preset>` wrote (e.g. reports/runs/baseline), "
                        f"holding seed<k>.json with seed<k>.queries.parquet beside each")
    files = sorted(folder.glob("*.json"))
    if not files:
        raise UserError(f"{folder} holds no run record (*.json); train the preset into it with `python -m "
                        f"harness.train --all-seeds --out {folder}` (or `dvc repro train@<preset>` for "
                        f"reports/runs/<preset>)")
    records = [read_record(f) for f in files]
    labels = sorted({r.label for r in records})
    seeds = [r.config.seed for r in records]
    if len(labels) > 1 or None in seeds or len(set(seeds)) < len(seeds):
        raise UserError(f"{folder} must hold the seeds of one configuration, each once; found labels {labels} and "
                        f"seeds {seeds}: give one preset's folder (as `--all-seeds --out` writes it)")
    try:
        sample = read_sample([(r.config.seed, queries_path(f)) for f, r in zip(files, records)], records[0].primary,
                             records[0].preset)
    except ValueError:  # the runs' query sets differ
        raise UserError(f"the runs in {folder} were scored on different query sets; retrain or rescore them on one "
                        f"prepared dataset") from None
    timed = [r.run.seconds for r in records if r.run.seconds is not None]
    machines = sorted({r.hardware for r in records})
    return Arm(folder, labels[0], sample, float(np.mean(timed)) if timed else None, " + ".join(machines))


def shared(a: Arm, b: Arm) -> tuple[Sample, Sample]:
    """Both arms restricted to the seeds they share, in order: paired by seed."""
    common = sorted(set(a.sample.seeds) & set(b.sample.seeds))
    if len(common) < 2:
        raise UserError(f"{a.folder} (seeds {list(a.sample.seeds)}) and {b.folder} (seeds {list(b.sample.seeds)}) "
                        f"share {len(common)} seed(s); pairing needs at least 2 seeds trained in both, to measure "
                        f"the seed-to-seed variation: train the missing seeds (the `seeds` list in params.yaml, then "
                        f"`dvc repro train@<preset>`, or `python -m harness.train --all-seeds --set seeds=[...]`)")
    try:
        same_test_set([a.sample, b.sample])
    except ValueError:
        raise UserError(f"{a.folder} and {b.folder} were scored on different test sets ({a.sample.clusters.size} and "
                        f"{b.sample.clusters.size} queries); compare presets trained and scored on one prepared "
                        f"dataset") from None
    return tuple(Sample(tuple(common), s.values[[s.seeds.index(k) for k in common]], s.clusters)
                 for s in (a.sample, b.sample))


def scalar(est: Estimate, score: str) -> Estimate:
    """One score's part of an Estimate over SCORES."""
    i = SCORES.index(score)
    return replace(est, **{k: getattr(est, k)[i] for k in ("point", "seed_part", "query_part", "query_noise",
                                                            "seed_var")})


def hours(seeds: float, a: Arm, b: Arm, where: bool = True) -> str:
    """The training time of `seeds` seeds of each arm in hours (on the recorded hardware), or why it is unknown."""
    if a.seconds is None or b.seconds is None:
        return "training time unknown: records without run.seconds"
    machine = a.hardware if a.hardware == b.hardware else f"{a.hardware} and {b.hardware}"
    return f"{seeds * (a.seconds + b.seconds) / 3600:.1f} h" + (f" of training on {machine}" if where else "")


def components(a: Sample, b: Sample, est: Estimate, score: str, labels: tuple[str, str]) -> list[str]:
    """The measured parts of one score's paired difference, in points: seeds, then the test set."""
    i = SCORES.index(score)
    per_a, per_b = a.per_seed[:, i], b.per_seed[:, i]
    corr = float(np.corrcoef(per_a, per_b)[0, 1]) if per_a.std() > 0 and per_b.std() > 0 else math.nan
    query_a, query_b = (100 * math.sqrt(s.estimate.query_part[i]) for s in (a, b))
    return [f"  seeds: std {labels[0]} {100 * per_a.std(ddof=1):.2f}, {labels[1]} {100 * per_b.std(ddof=1):.2f}, "
            f"paired correlation {corr:+.2f}: the difference's seed std {100 * math.sqrt(est.seed_var):.2f}",
            f"  test set: query SE {labels[0]} {query_a:.2f}, {labels[1]} {query_b:.2f}: the difference's "
            f"{100 * math.sqrt(est.query_part):.2f} (the arms share the queries; more seeds do not shrink it)"]


def for_delta(est: Estimate, delta: float, a: Arm, b: Arm, max_seeds: int | None) -> list[str]:
    """Seeds per arm and training time for 80 % power at `delta` (fraction): fixed design and sequential plan."""
    fixed = seeds_needed(est, np.asarray(delta))
    if np.isnan(fixed):
        return [f"  {100 * delta:g} points: no number of seeds detects it on this test set (its query part alone "
                f"leaves too much doubt); a larger test set would"]
    lines = [f"  {100 * delta:g} points at {100 * POWER:.0f} % power: fixed design {int(fixed)} seeds per arm "
             f"({hours(fixed, a, b)})"]
    plan = Plan(FIRST_LOOK, max_seeds) if max_seeds else plan_for(est, delta, FIRST_LOOK)
    if plan is None:
        return lines
    found, null = operating(plan, est, delta), operating(plan, est, 0.0)
    lines.append(f"  sequential, a look at every seed from {plan.first} to {plan.max_seeds} per arm: power "
                 f"{100 * found.power:.0f} %, {found.seeds:.1f} seeds per arm on average ({hours(found.seeds, a, b)}), "
                 f"at most {plan.max_seeds} ({hours(plan.max_seeds, a, b, where=False)}); {null.seeds:.1f} on average "
                 f"if there is no difference")
    return lines


def for_budget(est: Estimate, budget: float, a: Arm, b: Arm) -> list[str]:
    """The seeds per arm `budget` hours buy and the smallest difference they resolve at 80 % power."""
    if a.seconds is None or b.seconds is None:
        raise UserError(f"--budget-hours needs each run's training time, and the records in {a.folder} or {b.folder} "
                        f"have no run.seconds; give --max-seeds N instead")
    seeds = math.floor(budget * 3600 / (a.seconds + b.seconds))
    if seeds < 2:
        return [f"  {budget:g} h buys {seeds} seed(s) per arm; a paired comparison needs 2"]
    return [f"  {budget:g} h buys {seeds} seeds per arm: resolves {100 * float(mdd(at_seeds(est, seeds))):.2f} points "
            f"at {100 * POWER:.0f} % power"]


def for_max_seeds(est: Estimate, max_seeds: int, a: Arm, b: Arm) -> list[str]:
    """The smallest difference `max_seeds` seeds per arm resolve, and the sequential look at the seeds so far."""
    now = look(Plan(FIRST_LOOK, max_seeds), est)
    return [f"  {max_seeds} seeds per arm resolve {100 * float(mdd(at_seeds(est, max_seeds))):.2f} points at "
            f"{100 * POWER:.0f} % power ({hours(max_seeds, a, b)})",
            f"  sequential look at {now.seeds} seeds (plan {FIRST_LOOK}..{max_seeds}): {now.verdict}, "
            f"{100 * float(now.point):+.2f} [{100 * float(now.low):+.2f}, {100 * float(now.high):+.2f}] "
            f"at nominal level {now.level:.2g}"]


def positive(kind: type):
    """An argparse type: a positive number of `kind`."""
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise ValueError(text)
        return value
    parse.__name__ = f"positive {kind.__name__}"
    return parse


def main(argv: list[str] | None = None) -> int:
    """python -m harness.plan A_DIR B_DIR [--delta POINTS] [--budget-hours H] [--max-seeds N]."""
    parser = command_parser("harness.plan", "Seeds and training time a paired comparison of two presets needs, from "
                                            "their run records.", EXAMPLES)
    parser.add_argument("a", type=Path, metavar="A_DIR", help="run records of arm A (seed<k>.json + .queries.parquet)")
    parser.add_argument("b", type=Path, metavar="B_DIR", help="run records of arm B, the same seeds paired with A's")
    parser.add_argument("--delta", type=positive(float), metavar="POINTS",
                        help="the difference to detect, in points of percent (e.g. 2 for 2 points of rank-1)")
    parser.add_argument("--budget-hours", type=positive(float), metavar="H", help="training hours for both arms")
    parser.add_argument("--max-seeds", type=positive(int), metavar="N", help="seeds per arm at most (>= 2)")
    args = parser.parse_args(argv)
    if args.max_seeds is not None and args.max_seeds < FIRST_LOOK:
        raise UserError(f"--max-seeds {args.max_seeds}: a paired comparison needs at least {FIRST_LOOK} seeds per arm")
    a, b = read_arm(args.a), read_arm(args.b)
    sample_a, sample_b = shared(a, b)
    paired = difference(sample_a, sample_b)
    labels = (a.label, b.label)
    print(f"{a.label} - {b.label}, paired by seed over {paired.seeds} seeds ({', '.join(map(str, sample_a.seeds))}); "
          f"training {a.seconds or math.nan:.0f} s a seed for {a.label}, {b.seconds or math.nan:.0f} s for {b.label} "
          f"(points of percent)")
    for score, name in REPORTED.items():
        est = scalar(paired, score)
        print(f"{name}: {100 * float(est.point):+.2f} now; {paired.seeds} seeds resolve {100 * float(mdd(est)):.2f} "
              f"at {100 * POWER:.0f} % power")
        print("\n".join(components(sample_a, sample_b, est, score, labels)))
        if args.delta:
            print("\n".join(for_delta(est, args.delta / 100, a, b, args.max_seeds)))
        if args.budget_hours:
            print("\n".join(for_budget(est, args.budget_hours, a, b)))
        if args.max_seeds and not args.delta:
            print("\n".join(for_max_seeds(est, args.max_seeds, a, b)))
    return 0


if __name__ == "__main__":
    run(main)
