"""Benchmark reports: Pareto plots (PNG, offline HTML), tables and DVC metrics (python -m harness.report).

The DVC `report` stage builds them from run records (`--runs reports/runs/<preset>.json`, see
harness/records.py) and sweep tables (`--sweep .../results.parquet`): files DVC tracks, so the
report is a function of its declared inputs. `--from-mlflow` reads an MLflow experiment instead,
for ad-hoc views across experiments and sweeps outside DVC.

Accuracy is shown in percent (runs store fractions). The cost axis (report.cost_axis) is GMACs
(1e9 multiply-accumulates, not FLOPs) per clip at the input each run was measured, T x H x W;
GMACs per test tracklet under the run's test sampler (dense evaluation runs ceil(F / T) clips
per tracklet); or measured latency, ms per clip on the device the run trained on. Datasets
are never mixed in one plot: every (dataset, synthetic) group gets its own row of panels,
table and metrics entry; on the latency axis every device does too.
"""

from __future__ import annotations

import calendar
import functools
import html
import io
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import polars as pl
from matplotlib import ticker
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox
from mlflow import MlflowClient
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException

from harness.cli import UserError, config_parser, load_from_args, run
from harness.config import PAPER_INPUT
from harness.cost import UNITS as COST_UNITS
from harness.cost import macs_on_meta
from harness.io import atomic_path, check_writable, write_json_atomic
from harness.records import read_record
from harness.tracking import check_reachable, tracking_uri
from models.presets import preset_spec

log = logging.getLogger("harness.report")


@dataclass(frozen=True)
class Published:
    """A result reported by the paper's authors on real MARS (percent)."""

    name: str
    preset: str
    rank1: float
    map: float


# Liu et al., BMVC 2019, Table 5 (NVAN, STE-NVAN); the baseline is the authors' released checkpoint.
PUBLISHED = (
    Published("baseline", "baseline", 87.4, 79.4),
    Published("NVAN", "nvan", 90.0, 82.8),
    Published("STE-NVAN", "ste_nvan", 88.9, 81.2),
)
PAPER_WIDTH = 64  # ResNet-50
MARS_CLASSES = 625  # classifier size only; it adds no MACs to the embedding

METRICS = ("rank1", "rank5", "rank10", "rank20", "map", "minp")
PANELS = (("rank1", "rank-1 (%)"), ("map", "mAP (%)"))
# Params shown on hover: the model's spec and the knobs that most change accuracy.
HOVER_PARAMS = ("spec.width", "spec.last_stride", "spec.non_local", "spec.stripes", "spec.nl_window",
                "spec.temporal_pool_after", "train.epochs", "train.batch_size", "train.k",
                "train.optimizer", "train.lr", "train.amp", "eval.select_by")
# report.cost_axis -> the column plotted (as "cost") and the Pareto front's cost.
AXES = {"gmacs": "gmacs", "gmacs_tracklet": "gmacs_tracklet", "latency": "latency_ms"}
AXIS_NAMES = {"gmacs": "GMACs per clip", "gmacs_tracklet": "GMACs per test tracklet",
              "latency": "latency (ms per clip)"}
MAX_LABELS = 30  # per panel; beyond it only Pareto and preset runs are labelled (the HTML hovers all)

_TEXT = ("run_id", "parent_run_id", "label", "kind", "status", "dataset", "preset", "protocol",
         "device", "input", "git_commit", "eval_sampler", "latency_device")
_FLOAT = ("params_m", "gmacs", "gmacs_paper", "gmacs_tracklet", "clips_per_tracklet", "latency_ms", "latency_min_ms",
          "latency_max_ms", "train_s", *METRICS)
SCHEMA = {**dict.fromkeys(_TEXT, pl.String), "synthetic": pl.Boolean, "latency_noisy": pl.Boolean,
          "start_time": pl.Int64, **dict.fromkeys(_FLOAT, pl.Float64), **dict.fromkeys(HOVER_PARAMS, pl.String)}


def open_experiment(uri: str, experiment: str) -> tuple[MlflowClient, str]:
    """A client of an existing store and the id of `experiment`; UserError if either is missing."""
    check_reachable(uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise UserError(no_runs_message(uri, experiment, None, "the store does not exist"))
    client = MlflowClient(uri)
    try:
        found = client.get_experiment_by_name(experiment)
    except MlflowException as e:
        raise UserError(f"cannot read MLflow store {uri}: {e.message}; check mlflow.tracking_uri") from None
    if found is None:
        raise UserError(no_runs_message(uri, experiment, None, "the experiment does not exist"))
    return client, found.experiment_id


def no_runs_message(uri: str, experiment: str, dataset: str | None, why: str) -> str:
    """The one-paragraph error for a store without runs to report."""
    which = f" for dataset {dataset!r}" if dataset else ""
    return (f"nothing to report: MLflow experiment {experiment!r} in store {uri} has no training or "
            f"trial runs{which} ({why}). Produce runs with `dvc repro` (trains every preset), "
            f"`python -m harness.train` or `python -m harness.sweep`, or point the report at the store "
            f"and experiment that hold them (--experiment, --dataset, --set mlflow.tracking_uri=URI "
            f"or MLFLOW_TRACKING_URI).")


def _row(r) -> dict:
    tags, params, metrics = r.data.tags, r.data.params, r.data.metrics
    return {
        "run_id": r.info.run_id, "parent_run_id": tags.get("mlflow.parentRunId"),
        "label": tags.get("nvan.label") or r.info.run_name, "kind": tags.get("nvan.kind"),
        "status": tags.get("nvan.status") or r.info.status.lower(), "dataset": tags.get("dataset"),
        "synthetic": tags.get("dataset.synthetic") == "true", "preset": tags.get("preset"),
        "protocol": tags.get("protocol"), "device": tags.get("device"), "input": params.get("input"),
        "git_commit": params.get("git_commit"), "start_time": r.info.start_time,
        "params_m": metrics.get("cost.params_m"), "gmacs": metrics.get("cost.gmacs"),
        "gmacs_paper": metrics.get("cost.gmacs_paper"), "latency_ms": metrics.get("cost.latency_ms"),
        "latency_min_ms": metrics.get("cost.latency_min_ms"), "latency_max_ms": metrics.get("cost.latency_max_ms"),
        "latency_noisy": None if metrics.get("cost.latency_noisy") is None else bool(metrics["cost.latency_noisy"]),
        "latency_device": tags.get("cost.device"), "eval_sampler": params.get("eval.sampler"),
        "gmacs_tracklet": metrics.get("cost.gmacs_per_tracklet"), "clips_per_tracklet": metrics.get("cost.clips_per_tracklet"),
        "train_s": None if r.info.end_time is None else (r.info.end_time - r.info.start_time) / 1e3,
        **{m: metrics.get(f"best.{m}") for m in METRICS},
        **{p: params.get(p) for p in HOVER_PARAMS},
    }


def _param_text(value) -> str | None:
    """A config value as MLflow logs it (lists as '[0, 2, 3, 0]'), so both sources read alike."""
    return None if value is None else str(list(value) if isinstance(value, tuple) else value)


def _record_row(record: dict) -> dict:
    """One SCHEMA row from a run record (harness/records.py)."""
    config, cost, run = record["config"], record["cost"], record["run"]
    latency = cost.get("latency") or {}
    primary = config["eval"]["protocols"][0]
    best = record["scores"].get(primary, {})
    finished = run.get("finished_at")
    start_time = None
    if finished:
        start_time = int(1000 * calendar.timegm(time.strptime(finished, "%Y-%m-%dT%H:%M:%SZ")))

    def ms(key: str):
        return None if latency.get(key) is None else 1e3 * latency[key]

    hover = {p: _param_text(record["spec"].get(p.removeprefix("spec."))) if p.startswith("spec.")
             else _param_text(config.get(p.split(".")[0], {}).get(p.split(".")[1])) for p in HOVER_PARAMS}
    return {
        "run_id": run.get("mlflow_run_id"), "parent_run_id": None, "label": record["label"], "kind": record["kind"],
        "status": record.get("status", "finished"), "dataset": record["dataset"]["name"],
        "synthetic": bool(record["dataset"]["synthetic"]),
        "preset": record["preset"], "protocol": primary, "device": run.get("device"), "input": record["input"],
        "git_commit": record["git_commit"], "start_time": start_time,
        "params_m": cost.get("params_m"), "gmacs": cost.get("gmacs"), "gmacs_paper": cost.get("gmacs_paper"),
        "latency_ms": ms("median_s"), "latency_min_ms": ms("min_s"), "latency_max_ms": ms("max_s"),
        "latency_noisy": latency.get("noisy"), "latency_device": latency.get("device"), "train_s": run.get("seconds"),
        "eval_sampler": cost.get("eval_sampler"), "gmacs_tracklet": cost.get("gmacs_per_tracklet"),
        "clips_per_tracklet": cost.get("clips_per_tracklet"),
        **{m: best.get(m) for m in METRICS}, **hover,
    }


def load_records(paths: list[Path]) -> pl.DataFrame:
    """One row per run record file, in the order given."""
    return pl.DataFrame([_record_row(read_record(p)) for p in paths], schema=SCHEMA)


SWEEP_COLUMNS = ("label", "status", "map", "rank1", "gmacs_input", "dataset", "synthetic", "input")


def load_sweeps(paths: list[Path]) -> pl.DataFrame:
    """One row per trial of each sweep table (`reports/sweeps/<name>/results.parquet`)."""
    frames = []
    for path in paths:
        try:
            table = pl.read_parquet(path)
        except FileNotFoundError:
            raise UserError(f"sweep table {path} does not exist; run the sweep (python -m harness.sweep --name "
                            f"{path.parent.name}) or drop --sweep {path}") from None
        except (OSError, pl.exceptions.PolarsError) as e:
            raise UserError(f"sweep table {path} is not a parquet file ({type(e).__name__}); rerun the sweep") from None
        missing = [c for c in SWEEP_COLUMNS if c not in table.columns]
        if missing:
            raise UserError(f"sweep table {path} lacks columns {missing}; it was written by an older harness.sweep, "
                            f"rerun or resume the sweep to rewrite it")
        frames.append(table.select(
            run_id=pl.col("mlflow_run_id") if "mlflow_run_id" in table.columns else pl.lit(None, pl.String),
            parent_run_id=pl.lit(path.parent.name), label=pl.col("label"), kind=pl.lit("trial"),
            status=pl.col("status"), dataset=pl.col("dataset"), synthetic=pl.col("synthetic"),
            input=pl.col("input"), gmacs=pl.col("gmacs_input"), rank1=pl.col("rank1"), map=pl.col("map"),
            **{ours: pl.col(theirs) if theirs in table.columns else pl.lit(None, SCHEMA[ours])
               for ours, theirs in (("latency_ms", "latency_ms"), ("latency_device", "latency_device"),
                                    ("gmacs_tracklet", "gmacs_per_tracklet"))},
            git_commit=pl.col("git_commit") if "git_commit" in table.columns else pl.lit(None, pl.String),
        ))
    if not frames:
        return pl.DataFrame(schema=SCHEMA)
    rows = pl.concat(frames, how="diagonal_relaxed")
    return pl.concat([pl.DataFrame(schema=SCHEMA), rows], how="diagonal_relaxed").select(SCHEMA.keys()).cast(SCHEMA)


def load_runs(client: MlflowClient, experiment_id: str) -> pl.DataFrame:
    """One row per training or trial run of the experiment (sweep parents and foreign runs skipped)."""
    rows, token = [], None
    while True:
        page = client.search_runs([experiment_id], run_view_type=ViewType.ACTIVE_ONLY,
                                  max_results=1000, page_token=token)
        rows += [_row(r) for r in page if r.data.tags.get("nvan.kind") in ("train", "trial")]
        token = page.token
        if not token:
            return pl.DataFrame(rows, schema=SCHEMA)


def select_runs(runs: pl.DataFrame, dataset: str | None, latest_per_label: bool, axis: str = "gmacs") -> pl.DataFrame:
    """Runs of `dataset` (all if None) with their plot group and `cost` (the `axis` column); only each
    label's newest if asked. Latency groups are per device: times from different hardware never share a plot."""
    if dataset is not None:
        runs = runs.filter(pl.col("dataset") == dataset)
    group = pl.when(pl.col("synthetic")).then(pl.col("dataset") + " (synthetic)").otherwise(pl.col("dataset"))
    group = group.fill_null("unknown dataset")
    if axis == "latency":
        group = group + " on " + pl.col("latency_device").fill_null("an unknown device")
    runs = runs.with_columns(group=group, cost=pl.col(AXES[axis]))
    if latest_per_label:
        runs = runs.sort("start_time").unique(["group", "label"], keep="last", maintain_order=True)
    return runs.sort(["group", "cost", "label"], nulls_last=True)


def with_front(runs: pl.DataFrame, acc: str) -> pl.DataFrame:
    """Add bool column `pareto_<acc>`: on the front of max `acc`, min `cost` within its group."""
    # The front is found on distinct (cost, accuracy) pairs and joined back, so runs that tie exactly
    # (neither dominates the other) are all on it, not only the first one sorted.
    front = (runs.drop_nulls(["cost", acc]).select("group", "cost", acc).unique()
             .sort(["group", "cost", acc], descending=[False, False, True])
             .filter(pl.col(acc) > pl.col(acc).cum_max().shift(1).over("group").fill_null(-math.inf))
             .with_columns(pl.lit(True).alias(f"pareto_{acc}")))
    return (runs.join(front, on=["group", "cost", acc], how="left", maintain_order="left")
            .with_columns(pl.col(f"pareto_{acc}").fill_null(False)))


def plot_points(runs: pl.DataFrame) -> pl.DataFrame:
    """The runs with Pareto flags for rank-1 and mAP, accuracy also in percent (`<metric>_pct`)."""
    for acc, _ in PANELS:
        runs = with_front(runs, acc)
    return runs.with_columns((pl.col(m) * 100).alias(f"{m}_pct") for m in METRICS)


def axis_label(runs: pl.DataFrame, axis: str) -> str:
    """What a panel's x axis shows, with the input, test sampler or device it was counted or timed at."""
    inputs = runs["input"].drop_nulls().unique().sort().to_list()
    at = f"at {inputs[0]} (T x H x W)" if len(inputs) == 1 else "at each run's input (T x H x W after @)"
    if axis == "gmacs":
        return f"GMACs per clip {at}, log scale"
    if axis == "gmacs_tracklet":
        samplers = ", ".join(sorted(set(runs["eval_sampler"].drop_nulls()))) or "unknown sampler"
        return f"GMACs per test tracklet (mean over the test set; test sampler {samplers}) {at}, log scale"
    devices = ", ".join(sorted(set(runs["latency_device"].drop_nulls()))) or "an unknown device"
    return f"latency, ms per clip (median, batch 1) on {devices} {at}, log scale"


@functools.cache
def published_points() -> pl.DataFrame:
    """The paper's MARS numbers (percent) at the GMACs our cost model gives at 8x256x128, width 64."""
    return pl.DataFrame([{
        "name": p.name, "preset": p.preset, "rank1_pct": p.rank1, "map_pct": p.map,
        "gmacs": macs_on_meta(preset_spec(p.preset, num_classes=MARS_CLASSES, width=PAPER_WIDTH), PAPER_INPUT) / 1e9,
        "input": PAPER_INPUT.label(),
    } for p in PUBLISHED])


def _fmt(value, spec: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _latency_text(run: dict) -> str:
    """Median latency in ms, with 'noisy' when its range or the competing load was too wide to trust."""
    return _fmt(run["latency_ms"], ".1f") + (" noisy" if run.get("latency_noisy") else "")


def _per_frame(run: dict) -> float | None:
    """GMACs per frame: per clip over the T of the run's input 'TxHxW'."""
    if run["gmacs"] is None or not run["input"]:
        return None
    return run["gmacs"] / int(run["input"].split("x")[0])


def hover_text(run: dict) -> str:
    """The multi-line tooltip of one run: identity, config, cost and metrics (percent)."""
    spec = " ".join(f"{k.removeprefix('spec.')}={run[k]}" for k in HOVER_PARAMS if k.startswith("spec.") and run[k])
    train = " ".join(f"{k}={run[k]}" for k in HOVER_PARAMS if not k.startswith("spec.") and run[k])
    return "\n".join([
        f"{run['label']} ({run['kind']}, {run['status']}), {run['group']}",
        f"run {run['run_id']}" + (f", sweep {run['parent_run_id']}" if run["parent_run_id"] else ""),
        f"preset {run['preset']}, input {run['input']} (T x H x W), device {run['device']}",
        f"spec: {spec}", f"config: {train}",
        f"cost: {_fmt(run['gmacs'], '.3g')} GMACs/clip, {_fmt(_per_frame(run), '.3g')} GMACs/frame, "
        f"{_fmt(run['gmacs_tracklet'], '.3g')} GMACs/test tracklet "
        f"({run['eval_sampler']}: {_fmt(run['clips_per_tracklet'], '.2f')} clips), {_fmt(run['params_m'], '.2f')} M params",
        f"latency {_latency_text(run)} ms per clip (range {_fmt(run['latency_min_ms'], '.1f')}-"
        f"{_fmt(run['latency_max_ms'], '.1f')} ms) on {run['latency_device'] or '–'}",
        "best (%): " + " ".join(f"{m}={_fmt(run[f'{m}_pct'], '.1f')}" for m in METRICS),
        f"git {run['git_commit']}",
    ])


# Label offsets in points, nearest first: right/left/up/down of the point at growing distances.
_OFFSETS = tuple((r * dx, r * dy) for r in (5, 12, 22, 34)
                 for dx, dy in ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1)))


def _area(box: Bbox | None) -> float:
    return 0.0 if box is None else box.width * box.height


def _overlap(box: Bbox, others: list[Bbox], inside: Bbox) -> float:
    """Display area (pixels^2) `box` shares with `others`, plus 10x the area it sticks out of `inside`."""
    outside = _area(box) - _area(Bbox.intersection(box, inside))
    return sum(_area(Bbox.intersection(box, o)) for o in others) + 10 * outside


def _align(dx: float, dy: float) -> dict[str, str]:
    return {"ha": "left" if dx > 0 else "right" if dx < 0 else "center",
            "va": "bottom" if dy > 0 else "top" if dy < 0 else "center"}


def place_labels(ax: Axes, points: list[tuple[float, float, str]]) -> None:
    """Annotate (x, y, text) points at the nearest offset whose text overlaps no label, marker or edge."""
    if not points:
        return
    renderer = ax.figure.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    placed = [Bbox.from_bounds(px - 5, py - 5, 10, 10) for px, py in ax.transData.transform([p[:2] for p in points])]
    for x, y, text in points:
        best = (math.inf, 0.0, 0.0, None)
        for dx, dy in _OFFSETS:
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=8, **_align(dx, dy))
            box = ann.get_window_extent(renderer)
            ann.remove()
            cost = _overlap(box, placed, inside)
            if cost < best[0]:
                best = (cost, dx, dy, box)
            if cost == 0:
                break
        _, dx, dy, box = best
        arrow = {"arrowstyle": "-", "color": "0.6", "lw": 0.6} if abs(dx) + abs(dy) > 12 else None
        ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=8,
                    arrowprops=arrow, **_align(dx, dy))
        placed.append(box)


class _PlainLog(ticker.LogFormatter):
    """Log-axis tick labels as plain numbers (0.2, 40), on the ticks LogFormatter would label."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:g}" if super().__call__(x, pos) else ""


_STYLE = {
    "train": {"marker": "o", "s": 60, "color": "tab:blue", "label": "training run (preset)"},
    "trial": {"marker": "o", "s": 24, "color": "tab:gray", "alpha": 0.8, "label": "sweep trial"},
}
_PUBLISHED_LABEL = "published, real MARS (paper's accuracy; our GMACs at 8x256x128, ResNet-50)"


def _references_for(runs: pl.DataFrame, published: pl.DataFrame | None) -> pl.DataFrame | None:
    # The paper's numbers are MARS numbers: shown only beside runs on (real or synthetic) MARS.
    return published if published is not None and runs["dataset"][0] == "mars" else None


def _panel(ax: Axes, runs: pl.DataFrame, refs: pl.DataFrame | None, acc: str, name: str,
           gid: str, tips: dict[str, str], axis: str = "gmacs") -> list[tuple[float, float, str]]:
    """Draw one panel's points, front and references; return the (x, y, text) labels to place."""
    measured = runs.drop_nulls(["cost", acc])
    inputs = runs["input"].drop_nulls().unique().sort().to_list()
    for i, run in enumerate(measured.iter_rows(named=True)):
        ax.scatter(run["cost"], run[f"{acc}_pct"], gid=f"{gid}-{i}", zorder=3, **_STYLE[run["kind"]])
        tips[f"{gid}-{i}"] = hover_text(run)
    front = measured.filter(pl.col(f"pareto_{acc}")).sort("cost")
    # Ringed points keep a one-run front visible; the step shows the best accuracy reachable per cost.
    ax.step(front["cost"], front[f"{acc}_pct"], where="post", color="tab:red", lw=1.5, zorder=2, marker="o",
            markersize=11, markerfacecolor="none", label="Pareto front (max accuracy, min cost)")
    labels = []
    if refs is not None:
        for i, ref in enumerate(refs.iter_rows(named=True)):
            ax.scatter(ref["gmacs"], ref[f"{acc}_pct"], marker="*", s=220, color="tab:orange", edgecolor="black",
                       lw=0.6, zorder=4, gid=f"{gid}-ref{i}", label=_PUBLISHED_LABEL)
            tips[f"{gid}-ref{i}"] = (f"{ref['name']}, published on real MARS: rank-1 {ref['rank1_pct']:.1f} %, "
                                     f"mAP {ref['map_pct']:.1f} %\nour cost model: {ref['gmacs']:.1f} GMACs per clip "
                                     f"at {ref['input']} (T x H x W), width {PAPER_WIDTH}")
            labels.append((ref["gmacs"], ref[f"{acc}_pct"], f"{ref['name']} (published)"))
    shown = measured if len(measured) <= MAX_LABELS else measured.filter(
        pl.col(f"pareto_{acc}") | (pl.col("kind") == "train"))
    suffix = pl.lit("") if len(inputs) <= 1 else " @" + pl.col("input").fill_null("?")
    labels += shown.select("cost", f"{acc}_pct", pl.col("label") + suffix).rows()
    if measured.is_empty() and refs is None:
        ax.text(0.5, 0.5, "no run with both this cost and accuracy yet", transform=ax.transAxes, ha="center")
    else:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(_PlainLog(labelOnlyBase=False))
        ax.xaxis.set_minor_formatter(_PlainLog(labelOnlyBase=False))
    ax.set_xlabel(axis_label(runs, axis))
    ax.set_ylabel(name)
    stars = " (stars: paper, real MARS)" if refs is not None else ""
    ax.set_title(f"{runs['group'][0]}: {name.split()[0]} vs cost{stars}")
    ax.grid(True, which="both", alpha=0.3)
    return labels


def draw(points: pl.DataFrame, published: pl.DataFrame | None, axis: str = "gmacs") -> tuple[Figure, dict[str, str]]:
    """The Pareto figure, a row of rank-1 and mAP panels per dataset group, and its tooltips by SVG id."""
    groups = points["group"].unique(maintain_order=True).to_list()
    fig = Figure(figsize=(14, 5.5 * len(groups)), layout="constrained")
    FigureCanvasAgg(fig)  # no pyplot: no global figure state, no backend switch
    axes = fig.subplots(len(groups), 2, squeeze=False)
    fig.suptitle(f"Accuracy at the best checkpoint vs {AXIS_NAMES[axis]}"
                 + (" (GMACs = 1e9 multiply-accumulates)" if axis != "latency" else ""))
    tips: dict[str, str] = {}
    pending = []
    for row, group in enumerate(groups):
        runs = points.filter(pl.col("group") == group)
        refs = _references_for(runs, published)
        for col, (acc, name) in enumerate(PANELS):
            ax = axes[row][col]
            pending.append((ax, _panel(ax, runs, refs, acc, name, f"pt-{row}-{col}", tips, axis)))
    legend = {label: h for ax in axes.flat for h, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(legend.values(), legend.keys(), loc="outside lower center", ncols=len(legend))
    fig.canvas.draw()  # settle the layout, then freeze it so label boxes stay where they were measured
    fig.set_layout_engine("none")
    for ax, labels in pending:
        place_labels(ax, labels)
    return fig, tips


def svg_with_tooltips(fig: Figure, tips: dict[str, str]) -> str:
    """The figure as inline SVG whose points carry <title> tooltips (no external references)."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "nvan-bench", "svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg[svg.index("<svg"):], flags=re.S)
    for gid, tip in tips.items():
        svg = svg.replace(f'<g id="{gid}">', f'<g id="{gid}" class="point"><title>{html.escape(tip)}</title>', 1)
    return svg


COLUMNS = ("Pareto", "run", "dataset", "kind", "status", "input", "params (M)", "GMACs", "GMACs/tracklet",
           "test sampler", "latency (ms)", "latency on", "rank-1", "rank-5", "rank-10", "rank-20", "mAP", "mINP", "MLflow run", "git commit")


def _short_commit(commit: str | None) -> str:
    commit = commit or "–"
    return commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")


def table_rows(points: pl.DataFrame) -> list[list[str]]:
    """One row of COLUMNS per run, accuracy in percent, Pareto membership spelled out."""
    rows = []
    for r in points.iter_rows(named=True):
        front = ", ".join(n.split()[0] for acc, n in PANELS if r[f"pareto_{acc}"])
        rows.append([f"★ {front}" if front else "", r["label"], r["group"], r["kind"], r["status"],
                     r["input"] or "–", _fmt(r["params_m"], ".2f"), _fmt(r["gmacs"], ".3g"),
                     _fmt(r["gmacs_tracklet"], ".3g"), r["eval_sampler"] or "–", _latency_text(r),
                     r["latency_device"] or "–", *(_fmt(r[f"{m}_pct"], ".1f") for m in METRICS),
                     r["run_id"], _short_commit(r["git_commit"])])
    return rows


def intro(axis: str) -> str:
    """The paragraph above the tables: units, where latency comes from, what the Pareto front minimises."""
    return ("Accuracy (percent) at each run's best checkpoint on its primary protocol; GMACs = 1e9 "
            "multiply-accumulates (not FLOPs) per clip at the run's input, T x H x W; GMACs/tracklet: per test "
            "tracklet, mean over the test set, under the run's test sampler (dense runs ceil(F / T) clips of a "
            "tracklet of F frames, the others one); latency: median ms per batch of 1 clip of the BN-folded "
            "model that evaluation runs, timed with one training worker's resources on the device in 'latency "
            "on', marked noisy when its range exceeds 25 % of the median or other work used more than a quarter "
            f"of a core meanwhile. ★ marks runs on the Pareto front (max accuracy, min {AXIS_NAMES[axis]}) of "
            f"their {'dataset and device' if axis == 'latency' else 'dataset'}.")


def _published_rows(published: pl.DataFrame) -> list[list[str]]:
    return [[r["name"], f"{r['rank1_pct']:.1f}", f"{r['map_pct']:.1f}", f"{r['gmacs']:.2f}"]
            for r in published.iter_rows(named=True)]


_PUBLISHED_HEAD = ["published model", "rank-1", "mAP", f"GMACs at {PAPER_INPUT.label()} (ours)"]


_COST_HEAD = ["preset", "input T×H×W", "width", "params (M)", "GMACs", "batch", "latency (ms)", "range (ms)",
              "threads", "device", "peak memory (MiB)"]
_COST_KEYS = ("name", "input", "model_width", "params", "gmacs")


def load_costs(paths: list[Path]) -> list[dict]:
    """The records of `python -m harness.cost --out` files, in the order given."""
    records = []
    for path in paths:
        fix = f"rerun `dvc repro cost@{path.stem}` or `python -m harness.cost --preset {path.stem} --out {path}`"
        try:
            found = json.loads(path.read_text(encoding="utf-8"))["reports"]
        except FileNotFoundError:
            raise UserError(f"cost file {path} does not exist; {fix}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(f"cost file {path} is not a harness.cost report ({type(e).__name__}: {e}); "
                            f"expected a JSON object with a \"reports\" list; {fix}") from None
        for r in found:
            missing = [k for k in _COST_KEYS if not isinstance(r, dict) or k not in r]
            if missing:
                raise UserError(f"cost file {path}: a record lacks {missing} (each needs {list(_COST_KEYS)}); {fix}")
        records += found
    return records


def cost_rows(records: list[dict]) -> list[list[str]]:
    """One row of _COST_HEAD per cost record; latency and peak memory are per batch."""
    rows = []
    for r in records:
        lat = r.get("latency") or {}
        median = None if not lat else 1e3 * lat["median_s"]
        span = f"{1e3 * lat['min_s']:.1f}-{1e3 * lat['max_s']:.1f}" if lat else "–"
        rows.append([r["name"], r["input"], str(r["model_width"]), f"{r['params'] / 1e6:.2f}", f"{r['gmacs']:.3g}",
                     str(r.get("batch", "–")), _fmt(median, ".1f") + (" noisy" if lat.get("noisy") else ""), span,
                     str(lat.get("threads", "–")), lat.get("device", "–"), _fmt(r.get("peak_memory_mb"), ".1f")])
    return rows


_COST_INTRO = ("Every preset at the paper's input and width and as this benchmark trains it, from "
               "`python -m harness.cost`: GMACs per clip; latency (median and range of the timed runs) and peak "
               "memory per batch of the BN-folded model that evaluation runs, measured on the device named, on "
               "the machine that ran the cost stage.")


def markdown(points: pl.DataFrame, published: pl.DataFrame | None, source: str,
             costs: list[dict] | None = None, axis: str = "gmacs") -> str:
    """benchmark.md: an intro, one table per dataset group, the cost table and the paper's numbers."""
    def table(head: list[str], rows: list[list[str]]) -> list[str]:
        cells = [head, ["---"] * len(head), *rows]
        return ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]

    lines = ["# nvan-bench benchmark", "", f"Runs of {source}. {intro(axis)}", ""]
    for group in points["group"].unique(maintain_order=True):
        lines += [f"## {group}", "", *table(list(COLUMNS), table_rows(points.filter(pl.col("group") == group))), ""]
    if costs:
        lines += ["## Cost of each preset", "", _COST_INTRO, "", *table(_COST_HEAD, cost_rows(costs)), ""]
    if published is not None:
        lines += ["## Published reference (real MARS, Liu et al. BMVC 2019)", "",
                  *table(_PUBLISHED_HEAD, _published_rows(published)), ""]
    return "\n".join(lines)


def html_page(svg: str, points: pl.DataFrame, published: pl.DataFrame | None, source: str,
              costs: list[dict] | None = None, axis: str = "gmacs") -> str:
    """pareto.html: the figure with hover tooltips and the tables, inline and offline."""
    def table(head: list[str], rows: list[list[str]]) -> str:
        cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
        return f"<table><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr>{cells}</table>"

    parts = [f"<h2>{html.escape(g)}</h2>" + table(list(COLUMNS), table_rows(points.filter(pl.col("group") == g)))
             for g in points["group"].unique(maintain_order=True)]
    if costs:
        parts.append(f"<h2>Cost of each preset</h2><p>{html.escape(_COST_INTRO)}</p>"
                     + table(_COST_HEAD, cost_rows(costs)))
    if published is not None:
        parts.append("<h2>Published reference (real MARS)</h2>" + table(_PUBLISHED_HEAD, _published_rows(published)))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>nvan-bench: accuracy vs cost</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
svg {{ max-width: 100%; height: auto; }}
.point {{ cursor: help; }}
.point:hover {{ filter: drop-shadow(0 0 3px crimson); }}
table {{ border-collapse: collapse; font-size: 0.85em; }}
td, th {{ border: 1px solid #ccc; padding: 2px 6px; text-align: right; }}
</style></head><body>
<h1>nvan-bench: accuracy vs cost</h1>
<p>Runs of {html.escape(source)}. {html.escape(intro(axis))} Hover a point for its run's config and metrics.</p>
{svg}
{"".join(parts)}
</body></html>
"""


def metrics(points: pl.DataFrame) -> dict:
    """DVC metrics: per dataset group, the newest run of each label (accuracy in percent)."""
    out: dict = {}
    newest = points.sort("start_time").unique(["group", "label"], keep="last").sort(["group", "label"])
    for r in newest.iter_rows(named=True):
        out.setdefault(r["group"], {})[r["label"]] = {
            "rank1_pct": r["rank1_pct"], "map_pct": r["map_pct"], "minp_pct": r["minp_pct"],
            "gmacs": r["gmacs"], "gmacs_per_tracklet": r["gmacs_tracklet"], "params_m": r["params_m"],
            "latency_ms": r["latency_ms"], "latency_noisy": r["latency_noisy"],
        }
    return out


def write_report(points: pl.DataFrame, published: pl.DataFrame | None, out_dir: Path, source: str,
                 costs: list[dict] | None = None, axis: str = "gmacs") -> list[Path]:
    """Write pareto.png/.html, benchmark.md, metrics.json, pareto.csv (and cost.json) atomically; return them."""
    fig, tips = draw(points, published, axis)
    paths = [out_dir / n for n in ("pareto.png", "pareto.html", "benchmark.md", "metrics.json", "pareto.csv")]
    with atomic_path(paths[0]) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    with atomic_path(paths[1]) as tmp:
        tmp.write_text(html_page(svg_with_tooltips(fig, tips), points, published, source, costs, axis))
    with atomic_path(paths[2]) as tmp:
        tmp.write_text(markdown(points, published, source, costs, axis))
    write_json_atomic(paths[3], metrics(points))
    with atomic_path(paths[4]) as tmp:
        columns = ("group", "dataset", "synthetic", "label", "kind", "status", "input", "gmacs", "gmacs_tracklet",
                   "latency_ms", "latency_device", *(f"{m}_pct" for m in METRICS), "pareto_rank1", "pareto_map", "run_id")
        points.select(columns).write_csv(tmp, float_precision=4)
    if costs:
        paths.append(out_dir / "cost.json")
        write_json_atomic(paths[-1], {"units": COST_UNITS, "reports": costs})
    return paths


def collect_runs(*, records: list[Path] = (), sweeps: list[Path] = (),
                 mlflow: tuple[str, str] | None = None) -> tuple[pl.DataFrame, str]:
    """Every run to report and a description of where they came from: run records and sweep tables, or
    the MLflow experiment `mlflow` = (tracking URI, experiment name)."""
    if mlflow is not None:
        uri, experiment = mlflow
        return load_runs(*open_experiment(uri, experiment)), f"experiment {experiment!r} in {uri}"
    frames = [load_records(list(records)), load_sweeps(list(sweeps))]
    parts = [f"{len(records)} run record(s)"] + ([f"{len(sweeps)} sweep table(s)"] if sweeps else [])
    return pl.concat(frames, how="vertical"), " and ".join(parts)


def build_report(out_dir: Path, *, records: list[Path] = (), sweeps: list[Path] = (),
                 mlflow: tuple[str, str] | None = None, dataset: str | None = None, latest_per_label: bool = True,
                 published: bool = True, cost_files: list[Path] | None = None,
                 axis: str = "gmacs") -> tuple[list[Path], pl.DataFrame]:
    """Write every report into `out_dir` from run records and sweep tables (or an MLflow experiment), accuracy
    against the cost `axis` (report.cost_axis); return the files written and the plotted points."""
    for name in ("pareto.png", "pareto.html", "benchmark.md", "metrics.json", "pareto.csv", "cost.json"):
        check_writable(out_dir / name)
    costs = load_costs(cost_files or [])
    every, source = collect_runs(records=records, sweeps=sweeps, mlflow=mlflow)
    runs = select_runs(every, dataset, latest_per_label, axis)
    if runs.is_empty():
        have = sorted(every["dataset"].drop_nulls().unique().to_list())
        why = f"datasets with runs: {have}" if have else "it is empty"
        if mlflow is not None:
            raise UserError(no_runs_message(*mlflow, dataset, why))
        raise UserError(f"nothing to report: {source} hold no run{f' of dataset {dataset!r}' if dataset else ''} "
                        f"({why}); pass --runs FILE for each run record, or --dataset NAME")
    points = plot_points(runs)
    # The paper's numbers have GMACs per clip from our cost model, and no latency on any device of ours.
    refs = published_points() if published and axis == "gmacs" and (points["dataset"] == "mars").any() else None
    paths = write_report(points, refs, out_dir, source, costs, axis)
    log.info("%d runs in %d dataset group(s) -> %s", len(points), points["group"].n_unique(),
             ", ".join(str(p) for p in paths))
    return paths, points


def format_summary(points: pl.DataFrame) -> str:
    """The console summary: per dataset group, each run's accuracy, cost and training time."""
    lines = []
    for group in points["group"].unique(maintain_order=True):
        rows = points.filter(pl.col("group") == group)
        lines += [f"{group}: rank-1 / mAP (%) at the best checkpoint, GMACs per clip and per test tracklet, "
                  f"latency (ms per clip), training time",
                  f"  {'run':<28}{'rank-1':>8}{'mAP':>8}{'GMACs':>10}{'GMACs/trk':>11}{'latency ms':>16}"
                  f"{'trained s':>11}"]
        for r in rows.iter_rows(named=True):
            lines.append(f"  {r['label'][:27]:<28}{_fmt(r['rank1_pct'], '8.1f')}{_fmt(r['map_pct'], '8.1f')}"
                         f"{_fmt(r['gmacs'], '10.4g')}{_fmt(r['gmacs_tracklet'], '11.4g')}{_latency_text(r):>16}"
                         f"{_fmt(r['train_s'], '11.0f')}")
        total = rows["train_s"].drop_nulls().sum()
        if total:
            lines.append(f"  training took {total:.0f} s in all ({total / 60:.1f} min)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """python -m harness.report: read run records (or an MLflow experiment) and write the reports."""
    parser = config_parser(__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, action="append", default=[], metavar="FILE",
                        help="a run record written by `harness.train --out` (repeatable)")
    parser.add_argument("--sweep", type=Path, action="append", default=[], metavar="FILE",
                        help="a sweep's results.parquet (repeatable)")
    parser.add_argument("--from-mlflow", action="store_true",
                        help="report the runs of an MLflow experiment instead (ad hoc; not for DVC stages)")
    parser.add_argument("--dataset", help="only runs of this prepared dataset (default: report.dataset; "
                                          "null = every dataset, each in its own row of panels)")
    parser.add_argument("--experiment", help="with --from-mlflow: the experiment (default: mlflow.experiment)")
    parser.add_argument("--out-dir", type=Path, help="output folder (default: report.out_dir)")
    parser.add_argument("--cost-axis", choices=sorted(AXES),
                        help="x axis of the plots and Pareto fronts (default: report.cost_axis)")
    parser.add_argument("--cost", type=Path, action="append", default=[],
                        help="a `python -m harness.cost --out` file to merge into cost.json and the tables (repeatable)")
    args = parser.parse_args(argv)
    cfg = load_from_args(args)
    if args.from_mlflow == bool(args.runs or args.sweep):
        raise UserError("give the runs to report: --runs FILE (run records) and/or --sweep FILE (sweep tables), "
                        "or --from-mlflow for an MLflow experiment, not both")
    mlflow = (tracking_uri(cfg.mlflow.tracking_uri), args.experiment or cfg.mlflow.experiment) if args.from_mlflow \
        else None
    _, points = build_report(args.out_dir or cfg.report.out_dir, records=args.runs, sweeps=args.sweep, mlflow=mlflow,
                             dataset=args.dataset or cfg.report.dataset, latest_per_label=cfg.report.latest_per_label,
                             published=cfg.report.published, cost_files=args.cost,
                             axis=args.cost_axis or cfg.report.cost_axis)
    print(format_summary(points))
    return 0


if __name__ == "__main__":
    run(main)
