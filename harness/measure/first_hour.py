"""The first GPU hour, in one command: python -m harness.gpu_check --all [--out DIR].

After the GPU tests and the throughput table of `harness.gpu_check`, it runs what a first GPU
session must see work, each step a real command as a user would type it, its output in its own
log and its exit code and seconds in `summary.md`, everything under one folder:

1. synthetic MARS written and prepared at 256 x 128 (`datasets.synthetic`, `datasets.prepare`);
2. NVAN trained for 2 epochs on it at full width on the GPU (`harness.train`), evaluated after each
   epoch in the sharded evaluation, one rank per GPU (1, 2, 4 or 8 of them);
3. the best checkpoint scored again by `harness.evaluate` in one process, with its per-query outcomes: its
   scores must equal the sharded evaluation's;
4. `harness.bench`, every preset at full width and 8 x 256 x 128, training and inference steps of
   32 clips in fp32, TF32 and bf16.

The whole command has a budget (`--budget`, 570 seconds by default, so it fits a 10-minute call): a
step that would start after it is listed as skipped, not run, and one still running then is stopped.

`--rehearse` runs the same steps on the CPU at toy sizes (width 4, 64 x 32 frames, a handful of
identities, 2 ranks over gloo), so the plumbing is proven where there is no GPU; the GPU run changes only
the sizes.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness.results.records import RunRecord, read_record

log = logging.getLogger("harness.gpu_check")

ROOT = Path(__file__).resolve().parents[2]
BEST = "<the training's best checkpoint>"


@dataclass(frozen=True)
class Sizes:
    """How big each step is: model width, frame size, synthetic identities, frames per tracklet, clips per step,
    training ranks."""

    width: int
    height: int
    frame_width: int
    identities: int
    max_frames: int
    batch: int
    workers: int  # CPU processes for synthesis and preparation, shared by the ranks in training
    gpu: bool
    ranks: int = 1


GPU = Sizes(width=64, height=256, frame_width=128, identities=200, max_frames=16, batch=32, workers=8, gpu=True)
REHEARSAL = Sizes(width=4, height=64, frame_width=32, identities=16, max_frames=8, batch=8, workers=0, gpu=False,
                  ranks=2)


def ranks_for(gpus: int) -> int:
    """Training ranks for a machine of `gpus` GPUs: the most of 1, 2, 4 or 8 it holds (the 8 identities of a
    batch of 32 split evenly)."""
    return min(8, 1 << (max(gpus, 1).bit_length() - 1))


def steps(out: Path, s: Sizes) -> list[tuple[str, list[str]]]:
    """(name, command) of every step, in order; paths under `out`."""
    py = [sys.executable, "-m"]
    data, prepared = out / "data" / "raw" / "mars", out / "data" / "prepared"
    # Every preset at the paper's input (STE-NVAN's 16 stripes need its 256 rows), at the model width of the run.
    bench = [*py, "harness.bench", "--batch", str(s.batch if s.gpu else 2), "--mode", "infer,train",
             "--out-dir", str(out / "bench"), "--input", "8x256x128", "--set", f"cost.width={s.width}",
             *([] if s.gpu else ["--warmup", "1", "--repeats", "2"])]
    run = ["--set", f"data.prepared_root={prepared}", "--set", f"data.height={s.height}", "--set",
           f"data.width={s.frame_width}", "--set", "model.preset=nvan", "--set", f"model.width={s.width}",
           "--set", "eval.protocols=[mars-official,standard]", "--set", f"ray.use_gpu={str(s.gpu).lower()}",
           "--set", f"ray.num_workers={s.ranks}", "--set", f"ray.cpus_per_worker={max(s.workers // s.ranks, 1)}",
           "--set", f"mlflow.tracking_uri=sqlite:///{out / 'mlflow.db'}"]
    # The training path first: it is what a GPU session must see work; the bench rows after it.
    return [
        ("synthetic MARS", [*py, "datasets.synthetic", "--format", "mars", "--out", str(data), "--identities",
                            str(s.identities), "--cameras", "6", "--tracklets-per-id", "6", "--min-frames", "8",
                            "--max-frames", str(s.max_frames), "--height", str(max(s.height, 128)), "--width",
                            str(max(s.frame_width, 64)), "--distractors", "2", "--junk", "2", "--workers",
                            str(s.workers)]),
        ("prepare", [*py, "datasets.prepare", "--format", "mars", "--root", str(data), "--out", str(prepared / "mars"),
                     "--height", str(s.height), "--width", str(s.frame_width), "--workers", str(s.workers)]),
        ("train NVAN 2 epochs", [*py, "harness.train", *run, "--set", "train.epochs=2", "--set",
                                 f"train.batch_size={s.batch}", "--set", "train.k=4", "--set", "eval.every=1",
                                 "--set", f"ray.storage_path={out / 'ray'}", "--name", "gpu-hour", "--no-progress",
                                 "--out", str(out / "train" / "record.json")]),
        ("evaluate", [*py, "harness.evaluate", *run, "--checkpoint", BEST, "--out",
                      str(out / "evaluate" / "scores.json"), "--queries", str(out / "evaluate" / "queries.parquet")]),
        ("bench fp32 and TF32", [*bench, "--amp", "none", "--tf32", "off,on"]),
        ("bench bf16", [*bench, "--amp", "bf16", "--tf32", "off"]),
    ]


def best_checkpoint(out: Path) -> str:
    """The training step's best checkpoint, as its record names it (relative to ray.storage_path)."""
    record = out / "train" / "record.json"
    if not record.exists():
        return "no record: the training failed"
    return str(out / "ray" / (read_record(record).run.best_checkpoint or "none: it was not kept"))


def run_steps(out: Path, sizes: Sizes, budget_s: float) -> list[dict]:
    """Run every step, each with its log in `out`, within `budget_s` seconds in all (a step that would start after it
    is skipped, said so); return their names, commands, exit codes and seconds."""
    out.mkdir(parents=True, exist_ok=True)
    results, deadline = [], time.monotonic() + budget_s
    for name, command in steps(out, sizes):
        left = deadline - time.monotonic()
        if left <= 0:
            results.append({"step": name, "exit": "skipped: out of time", "seconds": 0, "log": "-",
                            "command": " ".join(command)})
            continue
        if BEST in command:
            command = [best_checkpoint(out) if c == BEST else c for c in command]
        log_file = out / "logs" / f"{len(results):02d} {name}.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with open(log_file, "w") as f:
            f.write("$ " + " ".join(command) + "\n\n")
            f.flush()
            try:
                code = subprocess.run(command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=left).returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
        results.append({"step": name, "exit": code, "seconds": round(time.perf_counter() - start, 1),
                        "log": str(log_file.relative_to(out)), "command": " ".join(command)})
        log.info("%s: exit %s in %.1f s (%s)", name, code, results[-1]["seconds"], log_file)
    return results


def summary(out: Path, device: str, check: str | None, results: list[dict]) -> str:
    """summary.md: each step's exit code and seconds, then the figures to read first."""
    lines = [f"# The first GPU hour: {device}", "", "| step | exit | seconds | log |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['step']} | {r['exit']} | {r['seconds']} | {r['log']} |" for r in results]
    if check:
        lines += ["", f"GPU tests and throughput table: {check}"]
    record = out / "train" / "record.json"
    if record.exists():
        found = read_record(record)
        run, scores = found.run, found.primary_scores
        lines += ["", f"Training: {_number(run.clips_per_s):.1f} clips/s, {_number(run.seconds):.0f} s, {found.epochs} "
                      f"epochs; precision {getattr(run, 'precision', None)}; {found.primary} rank-1 "
                      f"{100 * _number(scores.rank1):.1f} %, mAP {100 * _number(scores.map):.1f} % (2 epochs of "
                      f"synthetic data: this checks the path, not the accuracy)"]
        scored = out / "evaluate" / "scores.json"
        if scored.exists():
            lines += ["", agreement(found, json.loads(scored.read_text()))]
    lines += ["", "Bench tables (clips/s, ms per step, peak MiB per preset, mode, amp and TF32): bench/*.md"]
    return "\n".join(lines) + "\n"


def _number(value: float | None) -> float:
    """`value`, NaN where the record has none (it prints as nan)."""
    return math.nan if value is None else value


def agreement(record: RunRecord, scored: dict) -> str:
    """A line on whether harness.evaluate in one process gave the sharded training evaluation's scores (percent)."""
    keys = ("rank1", "rank5", "rank10", "rank20", "map", "minp")
    gaps = [abs(getattr(s, k) - scored[p][k]) for p, s in record.scores.items() for k in keys
            if getattr(s, k) is not None and k in scored.get(p, {})]
    if not gaps:
        return "Sharded against single-process evaluation: no common scores to compare (a step failed)"
    verdict = "identical" if max(gaps) == 0 else f"largest difference {100 * max(gaps):.3g} points"
    return (f"Sharded evaluation ({record.run.workers} ranks, in training) against harness.evaluate in one "
            f"process, same checkpoint, {len(gaps)} scores: {verdict}")
