"""What each Ray Train worker runs: P x K batches, triplet + ID loss, evaluation, checkpoints."""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from datasets.loaders import EvalClips, TrainClips, normalize, set_epoch, train_loader
from harness import storage
from harness.precision import effective as precision_effective
from harness.precision import set_tf32
from harness.redact import redact
from harness.checkpoint import read_state, rng_state, save_state, set_rng_state
from harness.config import Config, RayConfig, TrainConfig
from harness.evaluate.features import autocast
from harness.evaluate.queries import outcomes_table
from models.losses import reid_loss
from harness.train.node_check import check_node
from harness.train.plan import WorkerArgs
from harness.train.selection import Best, checkpoint_score, choose, evaluate_model
from harness.checkpoint import EPOCH_FILE, QUERIES_FILE
from models.checkpoints import load_imagenet
from models.spec import ModelSpec
from models.video_reid import build_model

log = logging.getLogger("harness.train_loop")

# Waiting for batches longer than this share of an epoch means the GPU (or CPU) idles for data.
LOADER_BOUND = 0.2
# What a checkpoint's epoch.json keeps of how rank 0's worker ran, for a resume that finds every epoch trained.
WORKER_KEYS = ("precision", "cpu_capability", "worker_cpu", "gpu")
StepHook = Callable[[int, int, int, dict[str, Any]], None]  # epoch, step, steps, stats (tensors and floats)


def build_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer named by train.optimizer over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    cls = torch.optim.AdamW if train.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=train.lr, weight_decay=train.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-epoch learning-rate schedule named by train.scheduler."""
    if train.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, train.step_size, train.gamma)
    if train.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, train.epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def train_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, train: TrainConfig,
                device: torch.device, scaler: torch.amp.GradScaler | None = None, epoch: int = 0,
                on_step: StepHook | None = None) -> dict[str, float]:
    """One pass over `loader`; returns mean loss parts, clips/s (this worker), epoch time (s) and the
    share of it spent waiting for the loader after its first batch (`loader_wait`, 0..1)."""
    model.train()
    steps = len(loader) if train.steps_per_epoch is None else min(len(loader), train.steps_per_epoch)
    totals: dict[str, torch.Tensor] = {}
    clips_seen, start, waited = 0, time.perf_counter(), 0.0
    optimizer.zero_grad(set_to_none=True)
    batches = iter(loader)
    for step in range(steps):
        asked = time.perf_counter()
        try:
            clips, labels, _ = next(batches)
        except StopIteration:
            break
        if step == 0:
            first_at = time.perf_counter()  # the first batch also pays for starting the workers: not counted
        else:
            waited += time.perf_counter() - asked
        clips = normalize(clips.to(device, non_blocking=True))
        labels = labels.to(device, non_blocking=True)
        update = (step + 1) % train.grad_accum == 0 or step + 1 == steps
        # Micro-steps that do not update accumulate locally; DDP all-reduces once, at the update.
        sync = nullcontext() if update or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast(device, train.amp):
                features, logits = model(clips)
            loss, stats = reid_loss(features, logits, labels, train.triplet_weight, train.id_weight)
            (scaler.scale(loss / train.grad_accum) if scaler else loss / train.grad_accum).backward()
        if update:
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        clips_seen += len(labels)
        for key, value in stats.items():
            totals[key] = totals[key] + value if key in totals else value
        if on_step:
            on_step(epoch, step + 1, steps, stats | {"clips_per_s": clips_seen / (time.perf_counter() - start)})
    end = time.perf_counter()
    means = {key: value.item() / max(steps, 1) for key, value in totals.items()}
    after_first = end - first_at if clips_seen else 0.0
    return means | {"clips_per_s": clips_seen / (end - start), "epoch_time_s": end - start,
                    "loader_wait": waited / after_first if after_first > 0 else 0.0}


def loader_warning(stats: dict[str, float], frames_per_clip: int, workers: int) -> str | None:
    """A warning when the training loop waited for data more than LOADER_BOUND of the epoch, else None."""
    wait = stats["loader_wait"]
    if wait <= LOADER_BOUND:
        return None
    delivered = stats["clips_per_s"] * frames_per_clip  # frames/s that went through
    return (f"the data loader is the bottleneck: the training loop waited for data {100 * wait:.0f}% of the "
            f"{stats['epoch_time_s']:.1f} s epoch; the loader delivered {delivered:,.0f} frames/s while the model "
            f"would take {delivered / (1 - wait):,.0f} frames/s. Raise train.loader_workers (now {workers}) with "
            f"ray.cpus_per_worker, keep the prepared data in page cache or on local disk, or prepare a JPEG store "
            f"(python -m datasets.prepare --store jpeg) where storage reads are the limit")


def training_model(spec: ModelSpec, imagenet_init: Path | None = None, sync_bn: bool = False) -> nn.Module:
    """A fresh model for `spec`, ImageNet weights loaded if given; with `sync_bn` every batch norm,
    the BNNeck and the non-local blocks' included, normalises over all ranks."""
    model = build_model(spec)
    if imagenet_init:
        load_imagenet(model, imagenet_init)
    return nn.SyncBatchNorm.convert_sync_batchnorm(model) if sync_bn else model


def save_checkpoint(folder: Path, model: nn.Module, spec: ModelSpec, optimizer: torch.optim.Optimizer,
                    scheduler, scaler: torch.amp.GradScaler | None, epoch: int, best: Best,
                    history: dict[int, dict[str, float]] | None = None) -> None:
    """A full checkpoint of the training state after `epoch` in `folder` (state.pt), with the metrics of every epoch
    so far (`history`), so a resume can log the epochs MLflow never heard of."""
    save_state(folder, model, spec, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
               scaler=scaler.state_dict() if scaler else None, epoch=epoch, rng=rng_state(), best=best.__dict__,
               history=history or {})


def restore(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
            scaler: torch.amp.GradScaler | None, shown: str | None = None) -> tuple[int, Best, dict[int, dict]]:
    """Load a `save_checkpoint` folder into the training objects; return the epoch to start at, the evaluation chosen so
    far and the metrics of every epoch it holds. Errors name `shown`, where the checkpoint lives, when `folder` is a
    local copy of it."""
    state = read_state(folder, shown)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])  # an fp16 resume keeps its loss scale
    set_rng_state(state["rng"])
    return state["epoch"] + 1, Best(**state["best"]), {int(e): m for e, m in state.get("history", {}).items()}


@dataclass
class Job:
    """One worker's share of a training run: its rank, device, data, model and optimisation state."""

    config: Config
    rank: int
    world: int
    device: torch.device
    loader: DataLoader
    loader_workers: int
    spec: ModelSpec
    model: nn.Module  # as trained (DDP-wrapped when world > 1)
    plain: nn.Module  # the model itself: what is evaluated and checkpointed
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    eval_set: EvalClips


def build_job(config: Config, directory: Path) -> Job:
    """This worker's training objects, built in the one order that fixes every random draw for a seed."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    # A reused Ray worker keeps torch's first thread count: set it from what this worker was given.
    torch.set_num_threads(config.ray.cpus_per_worker)
    device = ray.train.torch.get_device()
    # Autotuned convolution kernels: the clip shape is fixed for the whole run.
    torch.backends.cudnn.benchmark = device.type == "cuda"
    set_tf32(config.train.tf32)  # false: float32 is float32, as the authors trained (harness.precision)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    data = TrainClips(directory, config.data.frames, config.train.sampler, config.train.stride, seed=config.seed)
    workers = loader_workers(config.train, config.ray)
    loader = train_loader(data, config.train.p, config.train.k, workers, world, rank, config.train.epoch,
                          pin_memory=device.type == "cuda")
    spec = config.spec(data.num_classes)
    model = ray.train.torch.prepare_model(training_model(spec, config.train.imagenet_init, config.train.sync_bn))
    optimizer = build_optimizer(model, config.train)
    scaler = torch.amp.GradScaler(device.type) if config.train.amp == "fp16" else None
    return Job(config, rank, world, device, loader, workers, spec, model, getattr(model, "module", model), optimizer,
               build_scheduler(optimizer, config.train), scaler,
               EvalClips(directory, config.data.frames, config.eval.sampler))


class StepWatch:
    """Called after every step: notes when training began and the TF32 settings the first step ran with, shows
    rank 0's progress at most once a second, and injects the test hook's one failure (train.fail_at_step)."""

    def __init__(self, args: WorkerArgs, rank: int, world: int) -> None:
        self.progress, self.fail_at_step = args.progress, args.fail_at_step
        self.fail_marker, self.rank, self.world = args.fail_marker, rank, world
        self.first_step_at, self.shown_at = math.nan, 0.0
        self.precision: dict[str, Any] | None = None

    def __call__(self, epoch: int, step: int, steps: int, stats: dict[str, Any]) -> None:
        if math.isnan(self.first_step_at):
            self.first_step_at = time.time()
            self.precision = precision_effective()
        if self.fail_at_step is not None and epoch * steps + step == self.fail_at_step and self.rank == self.world - 1:
            if not storage.exists(self.fail_marker):  # fail once, so the restarted worker gets past this step
                storage.write_text(self.fail_marker, "")
                raise RuntimeError(f"injected failure at step {self.fail_at_step} (test hook)")
        # Reading the loss synchronises with the device: at most once a second, and only for a bar.
        if self.progress is not None and self.rank == 0 and (time.time() - self.shown_at >= 1 or step == steps):
            self.shown_at = time.time()
            self.progress.put_nowait((epoch, step, steps, stats["loss"].item(), stats["clips_per_s"] * self.world))


def run_worker(loop_config: dict[str, WorkerArgs]) -> None:
    """Ray Train entry point: train loop_config['args'].config on this worker, reporting every epoch."""
    import ray.train

    args = loop_config["args"]
    config = args.config
    check_node(args.directory, args.manifest_hash, config.train.imagenet_init, args.storage_probe, args.store_hash)
    job = build_job(config, args.directory)
    start_epoch, best, history = resume_point(job, args.resume_from)
    watch, warned, machine = StepWatch(args, job.rank, job.world), False, hardware(job.device)
    for epoch in range(start_epoch, config.train.epochs):
        set_epoch(job.loader, epoch)
        stats = train_epoch(job.model, job.loader, job.optimizer, config.train, job.device, job.scaler, epoch, watch)
        stats = _mean_over_workers(stats, job.world, job.device)
        metrics: dict[str, Any] = {"epoch": epoch, "lr": job.scheduler.get_last_lr()[0], **stats,
                                   "clips_per_s": stats["clips_per_s"] * job.world}
        job.scheduler.step()
        if job.rank == 0 and not warned and (warning := loader_warning(stats, config.data.frames, job.loader_workers)):
            log.warning("epoch %d: %s", epoch, warning)
            warned = True
        evaluate = (epoch + 1) % config.eval.every == 0 or epoch + 1 == config.train.epochs
        if evaluate:
            best = evaluate_epoch(job, epoch, best, metrics)
        metrics |= {"checkpoint_score": checkpoint_score(config.eval, epoch, metrics), "best_epoch": best.epoch,
                    "best_value": best.value, "best_scores": best.scores, "best_cmc": best.cmc,
                    "mlflow_run_id": args.mlflow_run_id,
                    # Lets a sweep free the workers of a trial that Tune stops early (ray#54305).
                    "placement_group": ray.get_runtime_context().get_placement_group_id(),
                    "first_step_at": watch.first_step_at, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "precision": watch.precision or precision_effective(), **machine}
        history[epoch] = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        every = config.train.checkpoint_every
        report_epoch(job, epoch, best, metrics, evaluate or (every is not None and (epoch + 1) % every == 0), history)


def resume_point(job: Job, resume_from: str | None) -> tuple[int, Best, dict[int, dict]]:
    """Restore the newest of Ray's checkpoint (a restart within the run) and `resume_from` (the newest complete one on
    disk when the run was resumed); return the epoch to start at, the evaluation chosen so far and the epochs' metrics
    (0, none and none: a new run)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    ours = _checkpoint_epoch(storage.join(resume_from, EPOCH_FILE)) if resume_from else -1
    theirs = _checkpoint_epoch(storage.join(checkpoint.path, EPOCH_FILE), checkpoint.filesystem) if checkpoint else -1
    if checkpoint is not None and theirs >= ours:
        with checkpoint.as_directory() as folder:
            return restore(Path(folder), job.plain, job.optimizer, job.scheduler, job.scaler, redact(checkpoint.path))
    if resume_from is None:
        return 0, Best(), {}
    if not storage.is_uri(resume_from):
        return restore(Path(resume_from), job.plain, job.optimizer, job.scheduler, job.scaler)
    with tempfile.TemporaryDirectory() as local:
        return restore(storage.download(resume_from, Path(local)), job.plain, job.optimizer, job.scheduler, job.scaler,
                       redact(resume_from))


def _checkpoint_epoch(location: str, filesystem=None) -> int:
    """The epoch a checkpoint's epoch.json names (-1 if it cannot be read)."""
    try:
        if filesystem is not None:
            with filesystem.open_input_stream(location) as f:
                return int(json.loads(f.read())["epoch"])
        return int(json.loads(storage.read_text(location))["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def evaluate_epoch(job: Job, epoch: int, best: Best, metrics: dict[str, Any]) -> Best:
    """Evaluate after `epoch` (every rank extracts, rank 0 scores into `metrics`); return the evaluation chosen so
    far (eval.select)."""
    evaluated = evaluate_model(job.plain, job.eval_set, job.config.eval, job.device, amp=job.config.train.amp,
                               workers=job.loader_workers, rank=job.rank, world=job.world)
    if evaluated is None:  # not rank 0: only rank 0 keeps scores
        return best
    scores, cmcs, queries = evaluated
    metrics |= scores
    by_protocol = {p: {k.removeprefix(p + "."): v for k, v in scores.items() if k.startswith(p + ".")}
                   for p in job.config.eval.protocols}
    return choose(job.config.eval, best, Best(epoch, scores[job.config.eval.select_by], by_protocol, cmcs, queries))


def report_epoch(job: Job, epoch: int, best: Best, metrics: dict[str, Any], checkpointed: bool,
                 history: dict[int, dict[str, float]]) -> None:
    """Report `epoch` to Ray Train, with rank 0's full checkpoint when `checkpointed`: state.pt, the chosen
    evaluation's per-query outcomes, and epoch.json (this epoch's numbers, and every earlier epoch's)."""
    import ray.train

    if job.rank != 0 or not checkpointed:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        if best.queries:  # the chosen evaluation's per-query outcomes, for the run record beside it
            outcomes_table(best.outcomes(), job.eval_set.rows).write_parquet(Path(folder) / QUERIES_FILE)
        save_checkpoint(Path(folder), job.plain, job.spec, job.optimizer, job.scheduler, job.scaler, epoch, best,
                        history)
        # Every file's size, so a copy cut short on its way to storage is told from a whole one (runs.saved_epochs);
        # the earlier epochs' numbers, so a resume logs those MLflow never heard of (runs.log_missing_epochs).
        numbers = history[epoch] | {"files": {f.name: f.stat().st_size for f in Path(folder).iterdir()},
                                    "history": {str(e): m for e, m in history.items() if e != epoch},
                                    "worker": {k: metrics.get(k) for k in WORKER_KEYS}}
        (Path(folder) / EPOCH_FILE).write_text(json.dumps(numbers))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def hardware(device: torch.device) -> dict[str, str | None]:
    """This worker's machine: its CPU model (`worker_cpu`) and the name of its CUDA device (`gpu`, None on a CPU)."""
    from harness.measure.hardware import cpu_name

    return {"worker_cpu": cpu_name(), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}


def loader_workers(train: TrainConfig, ray: RayConfig) -> int:
    """DataLoader processes per training worker: train.loader_workers, or by default all but one of the
    worker's CPUs on a GPU (that one drives the device) and none on a CPU (every core computes)."""
    if train.loader_workers is not None:
        return train.loader_workers
    return ray.cpus_per_worker - 1 if ray.use_gpu else 0


def _mean_over_workers(stats: dict[str, float], world: int, device: torch.device) -> dict[str, float]:
    """Average each stat over the data-parallel workers (identity for one worker)."""
    if world == 1:
        return stats
    import torch.distributed as dist

    keys = sorted(stats)
    values = torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return {k: v / world for k, v in zip(keys, values.tolist())}
