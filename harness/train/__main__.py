"""python -m harness.train: one training job on Ray Train (DDP), evaluated and tracked in MLflow."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from harness import preemption, storage
from harness.errors import UserError
from harness.cli import config_parser, load_from_args, run
from harness.config import Config
from harness.io import check_writable
from harness.redact import redact
from harness.train.driver import TrainingInterrupted, fit
from harness.train.plan import check_inputs
from harness.train.outcome import format_summary, train_record, write_run
from harness.train.run_dir import check_run_name
from harness.train.seeds import SeedsInterrupted, close_stopped, default_name, find_seed_set, fit_seeds, seed_run_name
from harness.cluster import ray_session


def local_cpus(config: Config, all_seeds: bool) -> int:
    """Logical CPUs of a local Ray: this machine's cores, or with --all-seeds on CPU workers enough for every seed at
    once. Workers run ray.cpus_per_worker threads each, so with one thread per worker the seeds share the cores
    without OpenMP barriers to stall, and their start-ups and evaluations overlap instead of queueing."""
    cores = os.cpu_count() or 1
    if not all_seeds or config.ray.use_gpu:
        return cores
    return max(cores, len(config.seeds) * config.ray.num_workers * config.ray.cpus_per_worker)


def check_resumable(config: Config, name: str, all_seeds: bool) -> None:
    """UserError unless there is something of run (or seed set) `name` to resume: a run folder, or the seed set's
    MLflow run (a set stopped before any seed began has no folder; resuming it starts them)."""
    root = storage.absolute(config.ray.storage_path)
    runs = [seed_run_name(name, seed) for seed in config.seeds] if all_seeds else [name]
    if any(storage.is_dir(storage.join(root, run)) for run in runs):
        return
    if all_seeds and find_seed_set(config.mlflow, name):
        return
    raise UserError(f"--resume {name}: no {'seed set' if all_seeds else 'run'} of that name in {redact(root)} (no "
                    f"folder {', '.join(runs)}); check the name and ray.storage_path, or start a new run with --name")


def _parser():
    parser = config_parser(
        "harness.train", "Train a model on Ray Train (DDP), evaluate it, and track it in MLflow.",
        ["python -m harness.train --set model.preset=nvan --name nvan-demo --out reports/adhoc/nvan-demo.json",
         "python -m harness.train --resume nvan-demo --out reports/adhoc/nvan-demo.json",
         "python -m harness.train --set model.preset=baseline --all-seeds --out reports/runs/baseline"])
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = load_from_args(args)
    address = args.address or config.ray.address
    check_inputs(config)
    for option, name in (("--name", args.name), ("--resume", args.resume)):
        if name:
            check_run_name(name, option)
    if args.out:
        check_writable(args.out / "seed0.json" if args.all_seeds else args.out)
    if args.resume:  # before a local Ray spends seconds starting
        check_resumable(config, args.resume, args.all_seeds)
    fail_at = os.environ.get("NVAN_TEST_FAIL_AT_STEP")
    preemption.raise_on_sigterm()
    try:
        with ray_session(address, num_cpus=local_cpus(config, args.all_seeds), log_to_driver=config.ray.log_to_driver):
            if args.all_seeds:
                results = fit_seeds(config, config.seeds, args.out or Path("reports/runs") / config.model.preset,
                                    args.resume or args.name or default_name(config.model.preset), resume=bool(args.resume))
                print("\n".join(format_summary(r) for r in results))
                return 0
            result = fit(config, name=args.name, resume=args.resume, progress=not args.no_progress,
                         fail_at_step=int(fail_at) if fail_at else None)
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


if __name__ == "__main__":
    run(main)
