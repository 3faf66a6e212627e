"""A training run as decided before anything starts: its inputs checked, its name taken or found, its params
recorded; nothing else is written."""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import storage
from harness.cluster import check_resources
from harness.config import Config
from harness.echo import short
from harness.errors import UserError
from harness.params import dotted
from harness.prepared import PreparedDataset, prepared_dataset
from harness.redact import redact
from harness.results.records import run_config
from harness.train.run_dir import PARAMS_FILE, check_run_name, saved_epochs
from models.spec import ModelSpec

log = logging.getLogger("harness.train")


@dataclass(frozen=True)
class RunPlan:
    """A training run as decided before anything starts: what it trains, on which data, and where it lives."""

    config: Config  # paths absolute: the workers do not run in the driver's working directory
    given: dict[str, Any]  # the params as the user gave them, which records and MLflow keep
    directory: Path  # the prepared dataset
    manifest: dict[str, Any]
    spec: ModelSpec
    ray_run: str
    run_dir: str  # <ray.storage_path>/<ray_run>: a folder or a URI
    resume: bool
    saved: dict[int, dict[str, Any]]  # the epochs a resumed run's checkpoints hold
    record_to: Path | str | None
    label: str
    kind: str


@dataclass(frozen=True)
class WorkerArgs:
    """What every Ray Train worker of a run is given (train_loop_config={"args": WorkerArgs}): the resolved config
    and what the driver checked or decided for it."""

    config: Config  # the plan's, paths absolute
    directory: Path  # the prepared dataset the driver checked (absolute): each node reads its copy there
    manifest_hash: str | None  # checked again on each node: its prepared copy must be the driver's
    store_hash: str | None
    mlflow_run_id: str
    storage_probe: str | None  # a file the driver wrote into a local run folder; None on an object store
    fail_marker: str  # where the test hook's injected failure notes it has happened
    resume_from: str | None  # a resumed run's newest complete checkpoint on disk
    progress: Any = None  # rank 0's step queue (a ray.util.queue.Queue), or None for no bars
    fail_at_step: int | None = None  # the test hook: fail the last rank once at this global step


def absolute_paths(config: Config) -> Config:
    """`config` with its data, storage and init paths made absolute (relative to this process's cwd; URIs kept)."""
    init = config.train.imagenet_init
    return config.model_copy(update={
        "data": config.data.model_copy(update={"prepared_root": config.data.prepared_root.resolve()}),
        "ray": config.ray.model_copy(update={"storage_path": storage.absolute(config.ray.storage_path)}),
        "train": config.train.model_copy(update={"imagenet_init": init.resolve() if init else None}),
    })


def check_inputs(config: Config) -> PreparedDataset:
    """The prepared dataset, after checking it fits the config, the init weights exist and the storage path is
    writable."""
    prepared = prepared_dataset(config.data)
    init = config.train.imagenet_init
    if init is not None and not init.is_file():
        raise UserError(f"train.imagenet_init {init} does not exist; give the path of a torchvision resnet50 "
                        f"state dict, or null to train from scratch")
    storage.check_writable(config.ray.storage_path)
    return prepared


def plan_run(config: Config, name: str | None, resume: str | None, record_to: Path | str | None,
             label: str | None, kind: str, prepared: PreparedDataset | None = None) -> RunPlan:
    """Check the inputs (unless the caller did: `prepared`, from check_inputs of the absolute paths) and the cluster,
    name the run (or find the one to resume); nothing is written but its folder."""
    given = config.model_dump(mode="json")
    config = absolute_paths(config)
    prepared = prepared or check_inputs(config)
    check_resources(config.ray)
    root = config.ray.storage_path
    if resume:
        check_run_name(resume, "--resume")
        if not storage.is_dir(storage.join(root, resume)):
            raise UserError(f"--resume {resume}: no run {redact(storage.join(root, resume))}; list the runs there or "
                            f"start a new one")
    else:
        name = name or f"{config.model.preset}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        check_run_name(name, "--name")
    ray_run = resume or name
    run_dir = storage.join(root, ray_run)
    storage.make_dirs(run_dir)
    spec = config.spec(prepared.num_classes)
    return RunPlan(config, given, prepared.directory, prepared.manifest, spec, ray_run, run_dir, bool(resume),
                   saved_epochs(run_dir) if resume else {}, record_to, label or config.model.preset, kind)


def check_params(plan: RunPlan) -> None:
    """A new run: its name must be free (no checkpoints, no recorded params), and its deciding params are recorded.
    A resumed run: its deciding params must be those it started with, but train.epochs may grow."""
    location = storage.join(plan.run_dir, PARAMS_FILE)
    now = run_config(plan.given)
    if not plan.resume:
        if storage.exists(location) or saved_epochs(plan.run_dir):
            raise UserError(f"run name {plan.ray_run} is taken: {redact(plan.run_dir)} holds its checkpoints; "
                            f"continue it with --resume {plan.ray_run}, or choose another --name")
        storage.write_text(location, json.dumps(now, indent=2, sort_keys=True))
        return
    if not storage.exists(location):
        log.warning("run %s has no %s (it predates them): its params cannot be checked", plan.ray_run, PARAMS_FILE)
        return
    was = json.loads(storage.read_text(location))
    changed = differing_params(was, now)
    if changed:
        listed = "; ".join(f"{key}: {short(a)} when it started, {short(b)} now" for key, a, b in changed[:8])
        raise UserError(f"--resume {plan.ray_run}: params that decide its results differ from the run's ({listed}); "
                        f"resume with the params it started with, or start a new run. Only train.epochs may change, "
                        f"and only grow: --resume {plan.ray_run} --set train.epochs=N trains it on to N epochs")
    if now != was:  # more epochs: the next resume compares with these
        storage.write_text(location, json.dumps(now, indent=2, sort_keys=True))


def differing_params(was: dict, now: dict) -> list[tuple[str, Any, Any]]:
    """(dotted key, then, now) for each deciding param that changed, but a growing train.epochs."""
    before, after = dotted(was), dotted(now)
    changed = []
    for key in sorted(before.keys() | after.keys()):
        a, b = before.get(key), after.get(key)
        if a == b or (key == "train.epochs" and isinstance(a, int) and isinstance(b, int) and b >= a):
            continue
        changed.append((key, a, b))
    return changed
