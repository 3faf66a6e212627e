"""python -m harness.train: one training job on Ray Train (DDP), evaluated and tracked in MLflow."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from harness import storage
from harness.cli import config_parser, load_from_args, run
from harness.io import check_writable
from harness.results.records import write_record
from harness.train.driver import TrainingInterrupted, check_inputs, fit
from harness.train.result import format_summary, train_record
from harness.train.runs import check_run_name
from harness.train.session import ray_session


def main(argv: list[str] | None = None) -> int:
    parser = config_parser("harness.train", "Train a model on Ray Train (DDP), evaluate it, and track it in MLflow.")
    parser.add_argument("--address", help="Ray cluster to join, e.g. 'auto' (default: ray.address, else a local Ray)")
    parser.add_argument("--name", help="name of the run (default: preset, time and a random suffix)")
    parser.add_argument("--resume", metavar="RUN", help="continue the stopped run RUN from its last checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--out", type=Path, help="write the run record (JSON, see harness/results/records.py) here")
    args = parser.parse_args(argv)
    config = load_from_args(args)
    address = args.address or config.ray.address
    check_inputs(config)
    for option, name in (("--name", args.name), ("--resume", args.resume)):
        if name:
            check_run_name(name, option)
    if args.out:
        check_writable(args.out)
    fail_at = os.environ.get("NVAN_TEST_FAIL_AT_STEP")
    try:
        with ray_session(address, num_cpus=os.cpu_count(), log_to_driver=config.ray.log_to_driver):
            result = fit(config, name=args.name, resume=args.resume, progress=not args.no_progress,
                         fail_at_step=int(fail_at) if fail_at else None)
    except TrainingInterrupted as stop:
        resume = " ".join(["python -m harness.train", *(sys.argv[1:] if argv is None else argv)])
        resume = re.sub(r"\s--(name|resume)[= ]\S+", "", resume) + f" --resume {stop.ray_run}"
        print(f"interrupted: MLflow run closed as interrupted; its checkpoints are in "
              f"{storage.join(config.ray.storage_path, stop.ray_run)}. Continue with:\n  {resume}", file=sys.stderr)
        return 130
    print(format_summary(result))
    if args.out:
        write_record(args.out, train_record(config, result))
    return 0


if __name__ == "__main__":
    run(main)
