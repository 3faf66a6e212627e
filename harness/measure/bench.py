"""Throughput of the model presets on this machine's device: inference and training steps, like timm's benchmark.

Units: a step is one batch of `batch` clips of T frames; step times are milliseconds per step
(median over `repeats` timed steps after `warmup` untimed ones, with min, max and quartiles),
throughput is clips per second (batch / median step seconds) and frames per second (clips/s x T).
Peak memory is MiB: on CUDA `torch.cuda.max_memory_allocated` over one step (weights, optimizer
state, activations); on CPU the peak resident set of one step above the bare process before the
model was built (the same parts, plus allocator and, with torch.compile, compiler memory).
compile_s is the seconds torch.compile added to the first step. other_cpus is how many cores other
processes kept busy while timing. Each measurement runs in a fresh spawned process.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import platform
import re
import resource
import socket
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from harness.errors import UserError
from harness.cli import config_parser, load_from_args
from harness.errors import ConfigError
from harness.config import InputSize
from harness.measure.cost import Latency, _rss_kb, cpu_name, peak_rss_mib, reset_peak_rss, time_steps
from harness.evaluate.features import autocast
from harness.io import atomic_path, check_writable
from harness.precision import set_tf32
from models.losses import reid_loss
from models.fuse import inference_model
from models.presets import preset_spec
from models.spec import ModelSpec, SpecError
from models.video_reid import build_model

log = logging.getLogger("harness.bench")

MODES, AMPS, SWITCHES = ("infer", "train"), ("none", "bf16", "fp16"), ("off", "on")
UNITS = ("step_ms_*: milliseconds per step (one batch of `batch` clips; median, min, max, quartiles over `repeats`); "
         "clips_per_s: clips per second = batch / median step seconds; frames_per_s: frames per second = clips_per_s "
         "x T; spread: (max - min) / median, a fraction; compile_s: seconds torch.compile added to the first step; "
         "peak_memory_mb: MiB (memory_kind says which: cuda max allocated, or cpu peak rss above the bare process); "
         "other_cpus: cores other processes kept busy while timing; batch_requested, batch: clips per step.")


@dataclass(frozen=True)
class Setting:
    """One measurement's knobs: mode, clips per step, autocast dtype, layout and compilation."""

    mode: str
    batch: int
    amp: str
    channels_last: bool
    compile: bool
    tf32: bool = False  # TF32 in cuDNN convolutions and CUDA matmuls (harness.precision); no effect on a CPU


def _is_oom(e: BaseException, capped: bool) -> bool:
    # CPU torch raises a plain RuntimeError ("DefaultCPUAllocator: can't allocate memory"). oneDNN only says
    # it "could not create a primitive" when its allocations fail, so that counts only under --memory-cap-mb.
    signs = ("can't allocate memory", "bad_alloc", "out of memory") + (("could not create a primitive",) if capped else ())
    return isinstance(e, (torch.OutOfMemoryError, MemoryError)) or isinstance(e, RuntimeError) and any(
        s in str(e) for s in signs)


def least_batch(spec: ModelSpec, size: InputSize, mode: str) -> int:
    """The fewest clips a step can take: training batch norm needs 2 rows (clips, or frames with a frame head)."""
    frames = size.frames // 2 ** len(spec.temporal_pool_after)
    return 2 if mode == "train" and (spec.head == "clip" or frames < 2) else 1


def bench_model(spec: ModelSpec, s: Setting, device: torch.device) -> torch.nn.Module:
    """The model `s` measures: fresh weights (seed 0), BN-folded for inference, in `s`'s memory layout, on `device`."""
    torch.manual_seed(0)
    model = build_model(spec)
    # What evaluation runs: BN folded into the convolutions.
    model = inference_model(model.eval()) if s.mode == "infer" else model.train()
    # build_model and inference_model both leave the backbone channels-last, so "off" must put it
    # back; only the 2D backbone changes (the non-local blocks' 5D weights keep their layout).
    model.backbone.to(memory_format=torch.channels_last if s.channels_last else torch.contiguous_format)
    return model.to(device)


def step_fn(model, compiled, s: Setting, clips: torch.Tensor, device: torch.device):
    """A closure running one inference or training step on `clips`."""
    amp = autocast(device, s.amp)
    if s.mode == "infer":
        def step():
            with torch.inference_mode(), amp:
                compiled(clips)
        return step
    batch = len(clips)
    k = min(4, max(1, batch // 2))  # P x K identities; two or more identities from batch 2 on
    labels = (torch.arange(batch) // k % model.spec.num_classes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type) if s.amp == "fp16" else None

    def step():
        with amp:
            features, logits = compiled(clips)
            loss, _ = reid_loss(features, logits, labels)
        if scaler:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def _measure(spec: ModelSpec, size: InputSize, s: Setting, warmup: int, repeats: int, threads: int,
             memory_cap_mb: int | None) -> dict:
    """Runs in a fresh spawned process: one try at `s`; status, Latency (s per step), memory (MiB), compile s."""
    set_tf32(s.tf32)
    if threads:
        torch.set_num_threads(threads)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    result = {"device": f"cuda: {torch.cuda.get_device_name()}" if cuda else f"cpu: {cpu_name()}",
              "threads": torch.get_num_threads(), "memory_kind": "cuda max allocated" if cuda else "cpu peak rss"}
    bare_kib = None if cuda else reset_peak_rss()
    model = bench_model(spec, s, device)
    compiled = torch.compile(model) if s.compile else model
    if memory_cap_mb is not None:
        # One smallest step first: thread pools, kernels and lazy imports set up under the cap fail in ways
        # that are not allocation errors (an OpenMP abort, a half-imported module).
        warm = torch.randn(least_batch(spec, size, s.mode), size.frames, 3, size.height, size.width, device=device)
        step_fn(model, model, s, warm, device)()
        model.zero_grad(set_to_none=True)
        del warm
        reset_peak_rss()  # hand freed heap back so VmSize is what is really mapped
        # RLIMIT_AS caps virtual memory (every mapping, not only resident pages), so this is a real
        # allocation failure. The soft limit may be raised back to the hard one afterwards.
        limit = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, ((_rss_kb("VmSize") + memory_cap_mb * 1024) * 1024, limit[1]))
    try:
        clips = torch.randn(s.batch, size.frames, 3, size.height, size.width, device=device)
        step = step_fn(model, compiled, s, clips, device)
        first = time.perf_counter()
        step()  # the first step compiles (torch.compile) and allocates optimizer state
        if cuda:
            torch.cuda.synchronize()
        first_s = time.perf_counter() - first
        for _ in range(max(warmup - 1, 0)):
            step()
        # Memory over one more untimed step: trimming the heap makes the next step fault its pages back in.
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            reset_peak_rss()
        step()
        if cuda:
            torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() / 2**20 if cuda
                else float("nan") if bare_kib is None else peak_rss_mib(bare_kib))
        times, other = time_steps(step, repeats, cuda)
    except Exception as e:
        # oneDNN may stay broken after a failed allocation, so a smaller batch gets a fresh process.
        if not _is_oom(e, memory_cap_mb is not None):
            raise
        return result | {"status": "oom", "note": f"out of memory at batch {s.batch}"}
    finally:
        if memory_cap_mb is not None:
            resource.setrlimit(resource.RLIMIT_AS, limit)
    latency = Latency.of(times, torch.get_num_threads(), result["device"], other)
    compile_s = max(first_s - latency.median_s, 0.0) if s.compile else 0.0
    return result | {"status": "ok", "note": "", "latency": latency, "peak_memory_mb": peak, "compile_s": compile_s}


def bench_one(spec: ModelSpec, size: InputSize, s: Setting, warmup: int, repeats: int, threads: int = 0,
              memory_cap_mb: int | None = None) -> dict:
    """A row's figures for `s` (ms per step, clips/s, frames/s, MiB, s), halving the batch on out-of-memory.

    Each try runs in a fresh spawned process, so peak memory counts this model alone.
    """
    batch, least = s.batch, least_batch(spec, size, s.mode)
    while True:
        with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
            result = pool.submit(_measure, spec, size, replace(s, batch=batch), warmup, repeats, threads,
                                 memory_cap_mb).result()
        if result["status"] == "ok" or batch // 2 < least:
            break
        log.info("out of memory at batch %d; trying %d", batch, batch // 2)
        batch //= 2
    return row_figures(s, batch, size.frames, **result)


def row_figures(s: Setting, batch: int, frames: int, status: str, note: str, device: str, threads: int,
                memory_kind: str = "", latency: Latency | None = None, peak_memory_mb: float = float("nan"),
                compile_s: float = float("nan")) -> dict:
    """A row's measured part: throughput (clips/s, frames/s), step ms, memory (MiB); NaN where not measured."""
    nan = float("nan")
    lat = latency or Latency(nan, nan, nan, nan, nan, 0, threads, device, None)
    clips_per_s = batch / lat.median_s
    return {"batch_requested": s.batch, "batch": batch, "oom_backoff": batch < s.batch, "status": status,
            "note": note, "device": device, "threads": threads, "compile_s": compile_s,
            "clips_per_s": clips_per_s, "frames_per_s": clips_per_s * frames, "step_ms_median": lat.median_s * 1e3,
            "step_ms_min": lat.min_s * 1e3, "step_ms_max": lat.max_s * 1e3, "step_ms_q1": lat.q1_s * 1e3,
            "step_ms_q3": lat.q3_s * 1e3, "spread": lat.spread, "noisy": latency is not None and lat.noisy,
            "repeats": lat.repeats, "other_cpus": nan if lat.other_cpus is None else lat.other_cpus,
            "peak_memory_mb": peak_memory_mb, "memory_kind": memory_kind}


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


def main(argv: list[str] | None = None) -> int:
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
    args = parser.parse_args(argv)
    config = load_from_args(args)
    check_writable(args.out_dir / "bench.parquet")  # before minutes of measuring
    cost = config.cost
    batches = parse_list("--batch", args.batch)
    amps = parse_list("--amp", args.amp, AMPS)
    layouts = parse_list("--channels-last", args.channels_last, SWITCHES)
    compiles = parse_list("--compile", args.compile, SWITCHES)
    tf32s = parse_list("--tf32", args.tf32, SWITCHES)
    modes = parse_list("--mode", args.mode, MODES)
    warmup = cost.warmup if args.warmup is None else args.warmup
    repeats = cost.repeats if args.repeats is None else args.repeats
    threads = cost.threads if args.threads is None else args.threads
    for option, value, least in (("--warmup", warmup, 0), ("--repeats", repeats, 1), ("--threads", threads, 0),
                                 ("--memory-cap-mb", args.memory_cap_mb, 1)):
        if value is not None and value < least:
            raise UserError(f"{option} {value}: expected an integer >= {least}")
    cuda = torch.cuda.is_available()
    if not cuda and "fp16" in amps:
        if amps == ["fp16"]:
            raise UserError("--amp fp16: fp16 autocast needs a CUDA device and there is none; use --amp bf16 or none")
        log.info("--amp fp16 skipped: fp16 autocast needs CUDA; those rows are marked skipped")
    try:
        size = InputSize.parse(args.input) if args.input else (config.data.input if args.configured else cost.inputs[0])
    except ConfigError as e:
        raise UserError(f"--input {args.input!r}: {e}") from None
    names = args.preset or ([config.model.preset] if args.configured else cost.presets)
    jobs = []
    for name in names:
        spec = (config.spec(cost.num_classes, name) if args.configured
                else preset_spec(name, cost.num_classes, width=cost.width, last_stride=config.model.last_stride))
        try:
            spec.validate_input(size.frames, size.height, size.width)
        except SpecError as e:
            raise SpecError(f"cannot bench {name} at {size.label()} (T x H x W), width {spec.width}: {e}; "
                            f"change --input, or the preset's params") from None
        jobs.append((name, spec))
    device = f"cuda: {torch.cuda.get_device_name()}" if cuda else f"cpu: {cpu_name()}"
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    common = {"torch_version": torch.__version__, "python_version": platform.python_version(),
              "hostname": socket.gethostname(), "started_at": started, "warmup": warmup}
    settings = [Setting(m, b, a, cl == "on", c == "on", tf == "on")
                for m, b, a, cl, c, tf in itertools.product(modes, batches, amps, layouts, compiles, tf32s)]
    work = [(name, spec, s) for name, spec in jobs for s in settings]
    tty = sys.stderr.isatty()
    bar = None
    if tty:
        from tqdm import tqdm
        bar = tqdm(total=len(work), unit="run", file=sys.stderr)
    rows, failed, own_threads = [], 0, threads or torch.get_num_threads()
    for i, (name, spec, s) in enumerate(work, 1):
        label = (f"{name} {s.mode} batch {s.batch} amp {s.amp} channels-last {'on' if s.channels_last else 'off'} "
                 f"compile {'on' if s.compile else 'off'} tf32 {'on' if s.tf32 else 'off'}")
        base = {"model": name, "spec": spec_summary(spec), "model_width": spec.width, "input": size.label(),
                "frames": size.frames, "mode": s.mode, "amp": s.amp, "channels_last": "on" if s.channels_last else "off",
                "compile": "on" if s.compile else "off", "tf32": "on" if s.tf32 else "off"} | common
        least, skip = least_batch(spec, size, s.mode), None
        if s.amp == "fp16" and not cuda:
            skip = "fp16 autocast needs CUDA"
        elif s.batch < least:
            skip = f"training {name} needs batch >= {least} (its batch norm needs 2 rows)"
        try:
            measured = (row_figures(s, s.batch, size.frames, "skipped", skip, device, own_threads) if skip
                        else bench_one(spec, size, s, warmup, repeats, threads, args.memory_cap_mb))
        except Exception as e:  # one broken setting (a compiler error, a killed child) keeps the rest
            log.error("%s failed: %r", label, e, exc_info=True)
            measured = row_figures(s, s.batch, size.frames, "failed", f"failed: {e!r}"[:300], device, own_threads)
            failed += 1
        rows.append(base | measured)
        if bar:
            bar.update()
        else:
            log.info("[%d/%d] %s: %s", i, len(work), label, measured["note"] or measured["status"] if
                     measured["status"] != "ok" else f"{measured['clips_per_s']:.2f} clips/s, median "
                                                     f"{measured['step_ms_median']:.1f} ms per step")
    if bar:
        bar.close()
    out_dir = args.out_dir
    settings_tag = "_".join([
        "+".join(names), f"w{jobs[0][1].width}-{size.label()}", "-".join(modes), "b" + "-".join(map(str, batches)),
        "amp-" + "-".join(amps), "cl-" + "-".join(layouts), "compile-" + "-".join(compiles)]
        + (["tf32-" + "-".join(tf32s)] if tf32s != ["off"] else []))
    stem = slug(f"{device.split(':')[0]}-{device.split(':', 1)[1]}") + f"_torch{slug(torch.__version__.split('+')[0])}_"
    stem += slug(settings_tag)
    import polars as pl  # only the parent writes tables; keeps the measuring processes' start light

    table = pl.DataFrame(rows, infer_schema_length=None)
    with atomic_path(out_dir / f"{stem}.parquet") as tmp:
        table.write_parquet(tmp)
    conditions = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
                  "hostname": socket.gethostname(), "started_at": started, "warmup steps": warmup,
                  "timed steps (repeats)": repeats, "threads": rows[0]["threads"] if rows else threads,
                  "memory cap": f"{args.memory_cap_mb} MiB of virtual memory (RLIMIT_AS)" if args.memory_cap_mb
                  else "none", "input (T x H x W)": size.label(),
                  "models": "; ".join(f"{n}: {spec_summary(spec)}" for n, spec in jobs)}
    markdown = _markdown(rows, conditions)
    with atomic_path(out_dir / f"{stem}.md") as tmp:
        tmp.write_text(markdown)
    print(markdown)
    log.info("wrote %s.parquet and .md", out_dir / stem)
    return 1 if failed else 0

