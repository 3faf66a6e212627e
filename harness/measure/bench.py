"""python -m harness.bench: throughput of the model presets on this machine's device, like timm's benchmark.

main parses the command line, plans the rows (every model under every combination of the options),
runs them (harness.measure.throughput measures each in a fresh spawned process) and writes the table.
Units: a step is one batch of `batch` clips of T frames; step times are milliseconds per step
(median over `repeats` timed steps after `warmup` untimed ones, with min, max and quartiles),
throughput is clips per second (batch / median step seconds) and frames per second (clips/s x T).
Peak memory is MiB (harness.measure.throughput says what it counts on CUDA and on CPU).
compile_s is the seconds torch.compile added to the first step. other_cpus is how many cores other
processes kept busy while timing.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import platform
import re
import socket
import sys
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from harness.cli import config_parser, load_from_args
from harness.config import Config, InputSize
from harness.errors import ConfigError, UserError
from harness.io import atomic_path, check_writable
from harness.measure.hardware import device_name
from harness.measure.throughput import Setting, bench_one, least_batch, row_figures
from models.presets import preset_spec
from models.spec import ModelSpec, SpecError

log = logging.getLogger("harness.bench")

MODES, AMPS, SWITCHES = ("infer", "train"), ("none", "bf16", "fp16"), ("off", "on")
UNITS = ("step_ms_*: milliseconds per step (one batch of `batch` clips; median, min, max, quartiles over `repeats`); "
         "clips_per_s: clips per second = batch / median step seconds; frames_per_s: frames per second = clips_per_s "
         "x T; spread: (max - min) / median, a fraction; compile_s: seconds torch.compile added to the first step; "
         "peak_memory_mb: MiB (memory_kind says which: cuda max allocated, or cpu peak rss above the bare process); "
         "other_cpus: cores other processes kept busy while timing; batch_requested, batch: clips per step.")


def parse_list(option: str, text: str, choices: tuple[str, ...] | None = None) -> list:
    """Comma-separated values of `option`: positive ints, or names from `choices`; UserError naming the option."""
    values = [v.strip() for v in text.split(",")]
    expected = (f"a comma-separated list of {', '.join(choices)}" if choices
                else "a comma-separated list of positive integers (clips per step), e.g. 1,8,32")
    for v in values:
        if (v not in choices) if choices else not (v.isdigit() and int(v) > 0):
            raise UserError(f"{option} {text!r}: {v!r} is not valid; expected {expected}")
    return list(dict.fromkeys(v if choices else int(v) for v in values))


def spec_summary(spec: ModelSpec) -> str:
    """The spec's fields other than the class count, e.g. 'width=64, non_local=(0, 2, 3, 0), ...'."""
    return ", ".join(f"{k}={v}" for k, v in asdict(spec).items() if k != "num_classes")


def slug(text: str) -> str:
    """A file-name-safe lower-case form of `text`: runs of other characters become one '-'."""
    return re.sub(r"[^a-z0-9._+]+", "-", text.lower()).strip("-.")


def format_table(rows: list[dict]) -> str:
    """A markdown table of the rows: throughput (clips/s, frames/s), step ms, peak MiB."""
    head = ["model", "mode", "batch", "amp", "tf32", "channels-last", "compile", "status", "clips/s", "frames/s",
            "median ms/step", "q1-q3 ms", "min-max ms", "peak MiB", "compile s", "other cpus"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        batch = f"{r['batch']}" + (f" (of {r['batch_requested']})" if r["oom_backoff"] else "")
        ok = r["status"] == "ok"
        cells = [r["model"], r["mode"], batch, r["amp"], r.get("tf32", "off"), r["channels_last"], r["compile"],
                 r["status"] + (" noisy" if r["noisy"] else ""),
                 *((f"{r['clips_per_s']:.2f}", f"{r['frames_per_s']:.1f}", f"{r['step_ms_median']:.1f}",
                    f"{r['step_ms_q1']:.1f}-{r['step_ms_q3']:.1f}", f"{r['step_ms_min']:.1f}-{r['step_ms_max']:.1f}",
                    f"{r['peak_memory_mb']:.0f}", f"{r['compile_s']:.1f}", f"{r['other_cpus']:.2f}")
                   if ok else ["-"] * 8)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _markdown(rows: list[dict], conditions: dict) -> str:
    head = "\n".join(f"- {k}: {v}" for k, v in conditions.items())
    notes = sorted({r["note"] for r in rows if r["note"]})
    return (f"# Throughput benchmark\n\n{head}\n\nUnits: {UNITS}\n\n{format_table(rows)}\n"
            + ("\nNotes: " + "; ".join(notes) + ".\n" if notes else ""))


@dataclass(frozen=True)
class Plan:
    """One bench command's work: the models at one input under every setting, and how to time them."""

    names: list[str]
    jobs: list[tuple[str, ModelSpec]]
    size: InputSize
    modes: list[str]
    batches: list[int]
    amps: list[str]
    layouts: list[str]
    compiles: list[str]
    tf32s: list[str]
    warmup: int
    repeats: int
    threads: int
    memory_cap_mb: int | None
    out_dir: Path
    device: str  # device_name's label of the device every row runs on
    started: str  # UTC, ISO 8601 to the second

    @property
    def settings(self) -> list[Setting]:
        """Every combination of the option lists, mode slowest."""
        return [Setting(m, b, a, cl == "on", c == "on", tf == "on") for m, b, a, cl, c, tf in itertools.product(
            self.modes, self.batches, self.amps, self.layouts, self.compiles, self.tf32s)]


def _parser() -> argparse.ArgumentParser:
    parser = config_parser(
        "harness.bench", "Inference and training throughput (clips/s, frames/s), step time and peak memory.",
        ["python -m harness.bench --preset nvan --batch 1,8 --mode infer",
         "python -m harness.bench --batch 1 --mode infer --compile off,on",
         "python -m harness.bench --configured --set model.preset=nvan --set model.non_local=[0,1,1,0]"])
    parser.add_argument("--preset", action="append",
                        help="preset to bench, repeatable (default: cost.presets; with --configured, model.preset)")
    parser.add_argument("--configured", action="store_true",
                        help="bench the spec params describe (model.*, presets.*) at data's input, not cost.width")
    parser.add_argument("--input", help="clip size TxHxW (default: cost.inputs[0]; with --configured, data's)")
    parser.add_argument("--batch", default="1,8,32", help="clips per step, comma-separated")
    parser.add_argument("--amp", default="none", help="autocast: none, bf16, fp16 (CUDA only), comma-separated")
    parser.add_argument("--channels-last", default="on", help="channels-last backbone: off, on, comma-separated")
    parser.add_argument("--compile", default="off", help="torch.compile: off, on, comma-separated")
    parser.add_argument("--tf32", default="off", help="TF32 in convolutions and matmuls (CUDA, Ampere and newer): "
                                                      "off (true fp32, train.tf32: false), on; comma-separated")
    parser.add_argument("--mode", default="infer,train", help="infer, train, comma-separated")
    parser.add_argument("--warmup", type=int, help="untimed steps before timing (default: cost.warmup)")
    parser.add_argument("--repeats", type=int, help="timed steps (default: cost.repeats)")
    parser.add_argument("--threads", type=int, help="torch threads; 0 = torch's default (default: cost.threads)")
    parser.add_argument("--memory-cap-mb", type=int,
                        help="cap each measuring process's virtual memory (RLIMIT_AS) at its size after building "
                             "the model plus this many MiB; a batch that does not fit is halved (default: no cap)")
    parser.add_argument("--out-dir", type=Path, default=Path("reports/bench"),
                        help="folder of the results (parquet and markdown, named by the conditions)")
    return parser


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Config]:
    """The command line and the config it loads, once the output folder is known to be writable."""
    args = _parser().parse_args(argv)
    config = load_from_args(args)
    check_writable(args.out_dir / "bench.parquet")  # before minutes of measuring
    return args, config


def _step_counts(args: argparse.Namespace, config: Config) -> tuple[int, int, int]:
    """Warmup steps, timed steps and torch threads: the options, else cost.*; UserError below their least."""
    cost = config.cost
    warmup = cost.warmup if args.warmup is None else args.warmup
    repeats = cost.repeats if args.repeats is None else args.repeats
    threads = cost.threads if args.threads is None else args.threads
    for option, value, least in (("--warmup", warmup, 0), ("--repeats", repeats, 1), ("--threads", threads, 0),
                                 ("--memory-cap-mb", args.memory_cap_mb, 1)):
        if value is not None and value < least:
            raise UserError(f"{option} {value}: expected an integer >= {least}")
    return warmup, repeats, threads


def _input_size(args: argparse.Namespace, config: Config) -> InputSize:
    """The clip size (T x H x W) to bench: --input, else data's with --configured, else cost.inputs[0]."""
    try:
        return InputSize.parse(args.input) if args.input else (
            config.data.input if args.configured else config.cost.inputs[0])
    except ConfigError as e:
        raise UserError(f"--input {args.input!r}: {e}") from None


def _checked_spec(name: str, size: InputSize, args: argparse.Namespace, config: Config) -> ModelSpec:
    """The spec `name` benches (params' with --configured, else the preset at cost.width), checked against `size`."""
    cost = config.cost
    spec = (config.spec(cost.num_classes, name) if args.configured
            else preset_spec(name, cost.num_classes, width=cost.width, last_stride=config.model.last_stride))
    try:
        spec.validate_input(size.frames, size.height, size.width)
    except SpecError as e:
        raise SpecError(f"cannot bench {name} at {size.label()} (T x H x W), width {spec.width}: {e}; "
                        f"change --input, or the preset's params") from None
    return spec


def make_plan(args: argparse.Namespace, config: Config) -> Plan:
    """What to measure, every option checked (UserError, SpecError) before any measuring starts."""
    batches = parse_list("--batch", args.batch)
    amps = parse_list("--amp", args.amp, AMPS)
    layouts = parse_list("--channels-last", args.channels_last, SWITCHES)
    compiles = parse_list("--compile", args.compile, SWITCHES)
    tf32s = parse_list("--tf32", args.tf32, SWITCHES)
    modes = parse_list("--mode", args.mode, MODES)
    warmup, repeats, threads = _step_counts(args, config)
    cuda = torch.cuda.is_available()
    if not cuda and "fp16" in amps:
        if amps == ["fp16"]:
            raise UserError("--amp fp16: fp16 autocast needs a CUDA device and there is none; use --amp bf16 or none")
        log.info("--amp fp16 skipped: fp16 autocast needs CUDA; those rows are marked skipped")
    size = _input_size(args, config)
    names = args.preset or ([config.model.preset] if args.configured else config.cost.presets)
    jobs = [(name, _checked_spec(name, size, args, config)) for name in names]
    return Plan(names, jobs, size, modes, batches, amps, layouts, compiles, tf32s, warmup, repeats, threads,
                args.memory_cap_mb, args.out_dir, device_name("cuda" if cuda else "cpu"),
                datetime.now(timezone.utc).isoformat(timespec="seconds"))


def _label(name: str, s: Setting) -> str:
    return (f"{name} {s.mode} batch {s.batch} amp {s.amp} channels-last {'on' if s.channels_last else 'off'} "
            f"compile {'on' if s.compile else 'off'} tf32 {'on' if s.tf32 else 'off'}")


def _row_labels(name: str, spec: ModelSpec, size: InputSize, s: Setting) -> dict:
    """A row's identifying columns: the model, its spec and input, and the setting."""
    return {"model": name, "spec": spec_summary(spec), "model_width": spec.width, "input": size.label(),
            "frames": size.frames, "mode": s.mode, "amp": s.amp, "channels_last": "on" if s.channels_last else "off",
            "compile": "on" if s.compile else "off", "tf32": "on" if s.tf32 else "off"}


def _measure_row(plan: Plan, name: str, spec: ModelSpec, s: Setting, label: str, own_threads: int) -> dict:
    """A row's measured part (row_figures): skipped where `s` cannot run here, failed where measuring raised."""
    size, least, skip = plan.size, least_batch(spec, plan.size, s.mode), None
    if s.amp == "fp16" and not plan.device.startswith("cuda"):
        skip = "fp16 autocast needs CUDA"
    elif s.batch < least:
        skip = f"training {name} needs batch >= {least} (its batch norm needs 2 rows)"
    try:
        return (row_figures(s, s.batch, size.frames, "skipped", skip, plan.device, own_threads) if skip
                else bench_one(spec, size, s, plan.warmup, plan.repeats, plan.threads, plan.memory_cap_mb))
    except Exception as e:  # one broken setting (a compiler error, a killed child) keeps the rest
        log.error("%s failed: %r", label, e, exc_info=True)
        return row_figures(s, s.batch, size.frames, "failed", f"failed: {e!r}"[:300], plan.device, own_threads)


def run_plan(plan: Plan) -> list[dict]:
    """One row per model and setting, measured in turn: clips/s, frames/s, ms per step, peak MiB."""
    common = {"torch_version": torch.__version__, "python_version": platform.python_version(),
              "hostname": socket.gethostname(), "started_at": plan.started, "warmup": plan.warmup}
    work = [(name, spec, s) for name, spec in plan.jobs for s in plan.settings]
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm
        bar = tqdm(total=len(work), unit="run", file=sys.stderr)
    rows, own_threads = [], plan.threads or torch.get_num_threads()
    for i, (name, spec, s) in enumerate(work, 1):
        label = _label(name, s)
        measured = _measure_row(plan, name, spec, s, label, own_threads)
        rows.append(_row_labels(name, spec, plan.size, s) | common | measured)
        if bar:
            bar.update()
        else:
            log.info("[%d/%d] %s: %s", i, len(work), label, measured["note"] or measured["status"] if
                     measured["status"] != "ok" else f"{measured['clips_per_s']:.2f} clips/s, median "
                                                     f"{measured['step_ms_median']:.1f} ms per step")
    if bar:
        bar.close()
    return rows


def _file_stem(plan: Plan) -> str:
    """The results' file name without suffix: device, torch version and settings, file-name-safe."""
    settings_tag = "_".join([
        "+".join(plan.names), f"w{plan.jobs[0][1].width}-{plan.size.label()}", "-".join(plan.modes),
        "b" + "-".join(map(str, plan.batches)), "amp-" + "-".join(plan.amps), "cl-" + "-".join(plan.layouts),
        "compile-" + "-".join(plan.compiles)]
        + (["tf32-" + "-".join(plan.tf32s)] if plan.tf32s != ["off"] else []))
    device = plan.device
    stem = slug(f"{device.split(':')[0]}-{device.split(':', 1)[1]}") + f"_torch{slug(torch.__version__.split('+')[0])}_"
    return stem + slug(settings_tag)


def _conditions(plan: Plan, rows: list[dict]) -> dict:
    """The markdown's header: device, versions, host, start, steps, threads, memory cap, input and models."""
    return {"device": plan.device, "torch": torch.__version__, "python": platform.python_version(),
            "hostname": socket.gethostname(), "started_at": plan.started, "warmup steps": plan.warmup,
            "timed steps (repeats)": plan.repeats, "threads": rows[0]["threads"] if rows else plan.threads,
            "memory cap": f"{plan.memory_cap_mb} MiB of virtual memory (RLIMIT_AS)" if plan.memory_cap_mb
            else "none", "input (T x H x W)": plan.size.label(),
            "models": "; ".join(f"{n}: {spec_summary(spec)}" for n, spec in plan.jobs)}


def write_results(plan: Plan, rows: list[dict]) -> None:
    """The rows as <stem>.parquet and <stem>.md (printed too) in plan.out_dir."""
    stem = _file_stem(plan)
    import polars as pl  # only the parent writes tables; keeps the measuring processes' start light

    table = pl.DataFrame(rows, infer_schema_length=None)
    with atomic_path(plan.out_dir / f"{stem}.parquet") as tmp:
        table.write_parquet(tmp)
    markdown = _markdown(rows, _conditions(plan, rows))
    with atomic_path(plan.out_dir / f"{stem}.md") as tmp:
        tmp.write_text(markdown)
    print(markdown)
    log.info("wrote %s.parquet and .md", plan.out_dir / stem)


def main(argv: list[str] | None = None) -> int:
    """python -m harness.bench: measure every planned row, write the tables; 1 if any row failed, else 0."""
    plan = make_plan(*parse_args(argv))
    rows = run_plan(plan)
    write_results(plan, rows)
    return 1 if any(r["status"] == "failed" for r in rows) else 0
