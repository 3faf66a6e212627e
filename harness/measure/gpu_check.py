"""python -m harness.gpu_check: the CUDA tests (tests/gpu), then every preset's throughput on this GPU.

The table has one row per preset x amp x channels-last, measured by harness.bench at full width (64)
and the paper's input (8 x 256 x 128); UNITS says what each column counts.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import platform
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from harness.measure import first_hour
from harness.measure.bench import slug
from harness.measure.throughput import Setting, bench_model, bench_one, step_fn
from harness.errors import UserError
from harness.cli import command_parser
from harness.config import PAPER_INPUT, InputSize
from harness.io import atomic_path, check_writable
from harness.measure.sdpa_kernels import sdpa_kernels, short_names
from models.presets import PRESETS, preset_spec
from models.spec import ModelSpec

log = logging.getLogger("harness.gpu_check")

ROOT = Path(__file__).resolve().parents[2]
GPU_TESTS = ("tests/gpu", "-q", "-p", "no:cacheprovider", "-n", "0")
MODES, AMPS, LAYOUTS = ("train", "infer"), ("none", "bf16", "fp16"), (True, False)
WIDTH = 64  # ResNet-50
NUM_CLASSES = 625  # MARS training identities; sizes only the classifier
UNITS = ("clips/s: clips per second (batch / median step seconds); peak MiB: torch.cuda.max_memory_allocated over "
         "one step (weights, optimizer state, activations); SDPA: the attention kernels one step ran "
         "(harness.sdpa_kernels; '-': the model has no attention).")


def require_cuda() -> str:
    """The CUDA device's name; UserError (exit code 2) when torch sees none."""
    if not torch.cuda.is_available():
        raise UserError(
            f"no CUDA device: python -m harness.gpu_check runs the CUDA training and evaluation tests (tests/gpu) "
            f"and times every preset on a GPU, but torch {torch.__version__} sees none here (CUDA build: "
            f"{torch.version.cuda or 'no, a CPU-only wheel'}). Run it on a GPU node, with a CUDA build of torch; "
            f"for CPU throughput use python -m harness.bench.")
    return torch.cuda.get_device_name()


def run_gpu_tests() -> tuple[bool, str]:
    """Run tests/gpu in a fresh pytest process, echoing its output: (every test ran and passed, summary line)."""
    lines = []
    with subprocess.Popen([sys.executable, "-m", "pytest", *GPU_TESTS], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line.strip())
    summary = next((line for line in reversed(lines) if line), f"pytest exited with code {proc.returncode}")
    # The suite skips itself without CUDA: a skip here means the child lost the GPU, not a pass.
    return proc.returncode == 0 and "skipped" not in summary, summary


def _kernels(spec: ModelSpec, size: InputSize, settings: list[Setting]) -> list[list[str]]:
    """Runs in a fresh spawned process: the SDPA kernels of one harness.bench step of each setting."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    found = []
    for s in settings:
        model = bench_model(spec, s, device)
        clips = torch.randn(s.batch, size.frames, 3, size.height, size.width, device=device)
        found.append(sorted(sdpa_kernels(step_fn(model, model, s, clips, device))))
    return found


def measure_rows(presets: list[str], size: InputSize, width: int, batch: int, amps: tuple[str, ...],
                 layouts: tuple[bool, ...], warmup: int, repeats: int) -> list[dict]:
    """One row per preset x amp x layout: per mode, harness.bench's figures (clips/s, MiB) and SDPA kernels."""
    rows = []
    for name in presets:
        spec = preset_spec(name, NUM_CLASSES, width=width)
        measured = {}
        for amp, channels_last, mode in itertools.product(amps, layouts, MODES):
            log.info("%s %s amp %s channels-last %s", name, mode, amp, channels_last)
            measured[amp, channels_last, mode] = bench_one(spec, size, Setting(mode, batch, amp, channels_last, False),
                                                           warmup, repeats)
        # At the batch that fitted (bench halves it on out-of-memory).
        ok = [Setting(mode, r["batch"], amp, cl, False) for (amp, cl, mode), r in measured.items() if r["status"] == "ok"]
        with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
            kernels = dict(zip(ok, pool.submit(_kernels, spec, size, ok).result()))
        for amp, channels_last in itertools.product(amps, layouts):
            row = {"model": name, "amp": amp, "channels_last": channels_last}
            for mode in MODES:
                r = measured[amp, channels_last, mode]
                row[mode] = r | {"sdpa": kernels.get(Setting(mode, r["batch"], amp, channels_last, False))}
            rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """A markdown table: train and infer clips/s, peak MiB and SDPA kernels per preset x amp x layout."""
    head = ["model", "amp", "channels-last", *(f"{m} {c}" for m in MODES for c in ("clips/s", "peak MiB", "SDPA"))]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["model"], row["amp"], "on" if row["channels_last"] else "off"]
        for mode in MODES:
            r = row[mode]
            if r["status"] != "ok":
                cells += [r["status"], "-", "-"]
                continue
            backoff = f" (batch {r['batch']})" if r["batch"] != r["batch_requested"] else ""
            cells += [f"{r['clips_per_s']:.1f}{backoff}", f"{r['peak_memory_mb']:.0f}", short_names(r["sdpa"] or ())]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(device: str, tests_passed: bool, tests_summary: str, rows: list[dict], conditions: dict) -> str:
    """The markdown report: the GPU tests' verdict, the conditions, the units and the table."""
    verdict = "passed" if tests_passed else "FAILED"
    notes = sorted({row[m]["note"] for row in rows for m in MODES if row[m]["note"]})
    return (f"# GPU check: {device}\n\n- GPU tests (pytest {' '.join(GPU_TESTS)}): {verdict}: {tests_summary}\n"
            + "".join(f"- {k}: {v}\n" for k, v in conditions.items())
            + f"\nUnits: {UNITS}\n\n{format_table(rows)}\n"
            + ("\nNotes: " + "; ".join(notes) + ".\n" if notes else ""))


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    parser = command_parser(
        "harness.gpu_check", "CUDA checks: tests/gpu, then train / infer clips/s, peak GPU memory and SDPA kernels\n"
                             "per preset x amp x channels-last.",
        ["python -m harness.gpu_check",
         "python -m harness.gpu_check --all",
         "python -m harness.gpu_check --rehearse --out reports/gpu_hour/rehearsal"])
    parser.add_argument("--batch", type=int, default=8, help="clips per step, at least 2")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps")
    parser.add_argument("--out", type=Path, help="markdown report (default: reports/gpu_check/<device>.md; with --all, "
                                                 "the folder of everything: reports/gpu_hour/<device>, with "
                                                 "--rehearse reports/gpu_hour/rehearsal)")
    parser.add_argument("--all", action="store_true",
                        help="the first GPU hour: after the check, bench rows (fp32, TF32, bf16), a 2-epoch NVAN "
                             "training at 8x256x128 on synthetic data and its evaluation, all under one folder")
    parser.add_argument("--rehearse", action="store_true",
                        help="the steps of --all on the CPU at toy sizes, to prove the plumbing without a GPU "
                             "(implies --all)")
    parser.add_argument("--budget", type=float, default=570,
                        help="with --all: seconds for the whole command, within a 10-minute call; a step that "
                             "would start after them is skipped and listed so")
    args = parser.parse_args(argv)
    if args.budget <= 0:
        raise UserError(f"--budget {args.budget:g}: expected seconds > 0")
    if args.rehearse:
        out = args.out or Path("reports/gpu_hour/rehearsal")
        results = first_hour.run_steps(out, first_hour.REHEARSAL, args.budget - (time.monotonic() - started))
        _write_summary(out, first_hour.summary(out, "CPU rehearsal", None, results))
        return 0 if all(r["exit"] == 0 for r in results) else 1
    device = require_cuda()
    for option, value, least in (("--batch", args.batch, 2), ("--warmup", args.warmup, 0),
                                 ("--repeats", args.repeats, 1)):
        if value < least:
            raise UserError(f"{option} {value}: expected an integer >= {least}"
                            + (" (training batch norm needs 2 clips)" if option == "--batch" else ""))
    folder = args.out or Path("reports/gpu_hour") / slug(device) if args.all else None
    out = folder / "gpu_check.md" if args.all else args.out or Path("reports/gpu_check") / f"{slug(device)}.md"
    check_writable(out)  # before minutes of tests and timing
    conditions = {"torch": torch.__version__, "CUDA": torch.version.cuda, "cuDNN": torch.backends.cudnn.version(),
                  "python": platform.python_version(),
                  "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "input (T x H x W)": PAPER_INPUT.label(), "model width": WIDTH, "batch (clips per step)": args.batch,
                  "warmup steps": args.warmup, "timed steps (repeats)": args.repeats}
    passed, summary = run_gpu_tests()
    rows = measure_rows(list(PRESETS), PAPER_INPUT, WIDTH, args.batch, AMPS, LAYOUTS, args.warmup, args.repeats)
    markdown = report(device, passed, summary, rows, conditions)
    with atomic_path(out) as tmp:
        tmp.write_text(markdown)
    print(markdown)
    log.info("wrote %s", out)
    checked = passed and all(row[m]["status"] == "ok" for row in rows for m in MODES)
    if not args.all:
        return 0 if checked else 1
    sizes = replace(first_hour.GPU, ranks=first_hour.ranks_for(torch.cuda.device_count()))
    results = first_hour.run_steps(folder, sizes, args.budget - (time.monotonic() - started))
    _write_summary(folder, first_hour.summary(folder, device, f"{'passed' if checked else 'FAILED'}: {summary}, "
                                                            f"table in gpu_check.md", results))
    return 0 if checked and all(r["exit"] == 0 for r in results) else 1


def _write_summary(folder: Path, text: str) -> None:
    with atomic_path(folder / "summary.md") as tmp:
        tmp.write_text(text)
    print(text)

