"""python -m harness.train: one training job on Ray Train (DDP), evaluated and tracked in MLflow."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

from harness import preemption, storage
from harness.errors import UserError
from harness.cli import config_parser, load_from_args, run
from harness.config import Config
from harness.prepared import PreparedDataset
from harness.io import check_writable
from harness.redact import redact
from harness.evaluate.sequential import Plan
from harness.evaluate.statistics import FRONT_SCORES
from harness.results.decisions import DECISION_FILE
from harness.train.decide import Arms, arm_configs, format_decision, until_decided
from harness.train.driver import TrainingInterrupted, fit
from harness.train.plan import absolute_paths, check_inputs
from harness.train.outcome import format_summary, train_record, write_run
from harness.train.run_dir import check_run_name
from harness.train.seeds import (SeedSet, SeedsInterrupted, close_stopped, default_name, find_seed_set, fit_seed_sets,
                                 seed_record, seed_run_name)
from harness.cluster import ray_session


def local_cpus(config: Config, runs: int) -> int:
    """Logical CPUs of a local Ray: this machine's cores, or with several runs at once (--all-seeds, a round of
    --until-decided) on CPU workers enough for all `runs`. Workers run ray.cpus_per_worker threads each, so with one
    thread per worker the seeds share the cores without OpenMP barriers to stall, and their start-ups and
    evaluations overlap instead of queueing."""
    cores = os.cpu_count() or 1
    if runs <= 1 or config.ray.use_gpu:
        return cores
    return max(cores, runs * config.ray.num_workers * config.ray.cpus_per_worker)


def check_resumable(config: Config, name: str, seed_sets: list[tuple[str, list[int]]] | None) -> None:
    """UserError unless there is something of run `name` to resume: a run folder, or the MLflow run of one of its
    `seed_sets` [(set name, seeds)] (a set stopped before any seed began has no folder; resuming it starts them)."""
    root = storage.absolute(config.ray.storage_path)
    runs = [seed_run_name(s, seed) for s, seeds in seed_sets for seed in seeds] if seed_sets else [name]
    if any(storage.is_dir(storage.join(root, run)) for run in runs):
        return
    if seed_sets and any(find_seed_set(config.mlflow, s) for s, _ in seed_sets):
        return
    raise UserError(f"--resume {name}: no {'seed set' if seed_sets else 'run'} of that name in {redact(root)} (no "
                    f"folder {', '.join(runs)}); check the name and ray.storage_path, or start a new run with --name")


def _parser():
    parser = config_parser(
        "harness.train", "Train a model on Ray Train (DDP), evaluate it, and track it in MLflow.",
        ["python -m harness.train --set model.preset=nvan --name nvan-demo --out reports/adhoc/nvan-demo.json",
         "python -m harness.train --resume nvan-demo --out reports/adhoc/nvan-demo.json",
         "python -m harness.train --set model.preset=baseline --all-seeds --out reports/runs/baseline",
         "python -m harness.train --set model.preset=nvan --until-decided --against baseline --max-seeds 8"])
    parser.add_argument("--address", help="Ray cluster to join, e.g. 'auto' (default: ray.address, else a local Ray)")
    parser.add_argument("--name", help="name of the run (default: preset, time and a random suffix)")
    parser.add_argument("--resume", metavar="RUN", help="continue the stopped run RUN from its last checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--out", type=Path, help="write the run record (JSON, see harness/results/records.py) here, and "
                                                 "its per-query outcomes beside it (.queries.parquet); with "
                                                 "--all-seeds a folder, one record per seed (seed<k>.json)")
    parser.add_argument("--all-seeds", action="store_true",
                        help="train once per seed of params' `seeds`, side by side in one Ray session; --name (or "
                             "--resume) names the set, each seed's run is <name>-seed<k>")
    decide = parser.add_argument_group("train until decided (harness.evaluate.sequential)")
    decide.add_argument("--until-decided", action="store_true",
                        help="train model.preset (A) and --against (B) seed by seed, side by side, until a "
                             "group-sequential test decides A - B, finds it futile, or --max-seeds is spent; records "
                             "go to --out (default reports/decide/<name>)/<preset>/seed<k>.json, the decision to "
                             "decision.json; --resume NAME continues it")
    decide.add_argument("--against", metavar="PRESET", help="the preset B that A is compared with")
    decide.add_argument("--max-seeds", type=int, default=None, help="the most seeds per arm (see harness.plan)")
    decide.add_argument("--first-seeds", type=int, default=2, help="seeds per arm before the first look (default 2)")
    decide.add_argument("--step", type=int, default=1, help="seeds per arm added each round (default 1)")
    decide.add_argument("--score", choices=FRONT_SCORES, default="rank1", help="the score decided (default rank1)")
    return parser


def _stopped(config: Config, stop: TrainingInterrupted, argv: list[str] | None) -> int:
    """Close what a Ctrl-C or SIGTERM stopped, say how to continue, and return the exit code."""
    closed, runs = "MLflow run", [stop.ray_run]
    if isinstance(stop, SeedsInterrupted):
        close_stopped(config.mlflow, stop)  # now that Ray is down: no seed's controller records an epoch after it
        closed = "the seeds' MLflow runs and records"
        runs = [run for run in stop.stopped if storage.is_dir(storage.join(config.ray.storage_path, run))]
    resume = " ".join(["python -m harness.train", *(sys.argv[1:] if argv is None else argv)])
    resume = re.sub(r"\s--(name|resume)[= ]\S+", "", resume) + f" --resume {stop.ray_run}"
    what = "preempted (SIGTERM)" if stop.preempted else "interrupted"
    took = preemption.seconds_since()
    folders = ", ".join(redact(storage.join(config.ray.storage_path, run)) for run in runs)
    print(f"{what}: {closed} closed as {what.split()[0]}{f' {took:.1f} s after the signal' if took else ''}; "
          f"{f'the checkpoints are in {folders}' if runs else 'no seed had begun to train'}. Continue with:\n"
          f"  {redact(resume)}", file=sys.stderr)
    return preemption.EXIT_CODE if stop.preempted else 130


def _decide_args(parser, args, config: Config) -> tuple[Arms, Plan] | None:
    """The two arms and the sequential plan of --until-decided (None without it); a usage error names a bad flag."""
    if not args.until_decided:
        for flag, value in (("--against", args.against), ("--max-seeds", args.max_seeds)):
            if value is not None:
                parser.error(f"{flag} goes with --until-decided")
        return None
    if args.all_seeds or not args.against or args.max_seeds is None:
        parser.error("--until-decided needs --against PRESET (the arm B to compare with) and --max-seeds N (the "
                     "budget per arm; `python -m harness.plan` says how many a difference needs), and not --all-seeds")
    a, b = arm_configs(config, args.against)
    if a.model.preset == b.model.preset:
        parser.error(f"--against {args.against}: compare model.preset={a.model.preset} with another preset")
    if not 2 <= args.first_seeds <= args.max_seeds or args.step < 1:
        parser.error(f"--first-seeds {args.first_seeds} --max-seeds {args.max_seeds} --step {args.step}: give 2 <= "
                     f"--first-seeds <= --max-seeds (two seeds per arm are the fewest that measure the seed "
                     f"variation) and --step >= 1")
    name = args.resume or args.name or default_name(f"{a.model.preset}-vs-{b.model.preset}")
    return (Arms(a, b, args.out or Path("reports/decide") / name, name),
            Plan(first=args.first_seeds, max_seeds=args.max_seeds, step=args.step))


def _with_inputs(decide: tuple[Arms, Plan] | None, prepared: PreparedDataset) -> tuple[Arms, Plan] | None:
    """--until-decided's arms with the inputs they share, checked once."""
    return decide and (replace(decide[0], prepared=prepared), decide[1])


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    config = load_from_args(args)
    decide = _decide_args(parser, args, config)
    address = args.address or config.ray.address
    # Once per run: the arms of --until-decided share the data, init and storage, and so this check.
    prepared = check_inputs(absolute_paths(config))
    decide = _with_inputs(decide, prepared)
    for option, name in (("--name", args.name), ("--resume", args.resume)):
        if name:
            check_run_name(name, option)
    if decide:
        check_writable(decide[0].out / DECISION_FILE)
    elif args.out:
        check_writable(args.out / "seed0.json" if args.all_seeds else args.out)
    if args.resume:  # before a local Ray spends seconds starting
        check_resumable(config, args.resume, _seed_sets(config, args, decide))
    fail_at = os.environ.get("NVAN_TEST_FAIL_AT_STEP")
    preemption.raise_on_sigterm()
    runs = 2 * max(args.first_seeds, args.step) if decide else len(config.seeds) if args.all_seeds else 1
    try:
        with ray_session(address, num_cpus=local_cpus(config, runs), log_to_driver=config.ray.log_to_driver):
            if decide:
                print(format_decision(until_decided(*decide, args.score, resume=bool(args.resume))))
                return 0
            if args.all_seeds:
                name = args.resume or args.name or default_name(config.model.preset)
                out = args.out or Path("reports/runs") / config.model.preset
                [results] = fit_seed_sets([SeedSet(config, config.seeds, name, partial(seed_record, out),
                                                   prepared=prepared)], bool(args.resume), name)
                print("\n".join(format_summary(r) for r in results))
                return 0
            result = fit(config, name=args.name, resume=args.resume, progress=not args.no_progress,
                         fail_at_step=int(fail_at) if fail_at else None, prepared=prepared)
    except TrainingInterrupted as stop:
        return _stopped(config, stop, argv)
    except KeyboardInterrupt:
        if not preemption.requested():
            raise
        print("preempted (SIGTERM) before training began: nothing was trained; run the command again",
              file=sys.stderr)
        return preemption.EXIT_CODE
    print(format_summary(result))
    if args.out:
        write_run(args.out, train_record(config, result), result.queries)
    return 0


def _seed_sets(config: Config, args, decide: tuple[Arms, Plan] | None) -> list[tuple[str, list[int]]] | None:
    """The seed sets a --resume of this command continues [(set name, seeds)]; None for a single run."""
    if decide:
        arms, plan = decide
        return [(arms.seed_set(arm, list(range(plan.max_seeds))).name, list(range(plan.max_seeds)))
                for arm in (arms.a, arms.b)]
    return [(args.resume, config.seeds)] if args.all_seeds else None


if __name__ == "__main__":
    run(main)
