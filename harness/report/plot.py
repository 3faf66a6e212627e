"""The Pareto figure: accuracy against cost, one row of rank-1 and mAP panels per dataset group, with hover tips."""

from __future__ import annotations

import html
import io
import json
import math
import re

import matplotlib
import polars as pl
from matplotlib import ticker
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from harness.report.runs import AXIS_NAMES, HOVER_PARAMS, MAX_LABELS, METRICS, PANELS, PAPER_WIDTH
from harness.report.tables import (OPTIMISTIC, OPTIMISTIC_TEXT, fmt, in_bulk, interval_text, latency_text,
                                   selection_text)


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
        f"cost: {fmt(run['gmacs'], '.3g')} GMACs/clip, {fmt(_per_frame(run), '.3g')} GMACs/frame, "
        f"{fmt(run['gmacs_tracklet'], '.3g')} GMACs/test tracklet "
        f"({run['eval_sampler']}: {fmt(run['clips_per_tracklet'], '.2f')} clips), {fmt(run['params_m'], '.2f')} M params",
        f"latency {latency_text(run)} ms per clip (range {fmt(run['latency_min_ms'], '.1f')}-"
        f"{fmt(run['latency_max_ms'], '.1f')} ms) on {run['latency_device'] or '–'}",
        "scores (%, scored epoch): " + " ".join(f"{m}={fmt(run[f'{m}_pct'], '.1f')}" for m in METRICS),
        f"{run['seeds']} seed(s); 95 % interval (seeds x queries): rank-1 {interval_text(run, 'rank1')}, "
        f"mAP {interval_text(run, 'map')}; std over seeds: rank-1 {fmt(run['rank1_std_pct'], '.1f')}, "
        f"mAP {fmt(run['map_std_pct'], '.1f')}",
        f"P(on the Pareto front): rank-1 {fmt(run['p_front_rank1'], '.2f')}, mAP {fmt(run['p_front_map'], '.2f')}; "
        f"on it with 95 % confidence: rank-1 {_yes(run['sure_rank1'])}, mAP {_yes(run['sure_map'])}",
        f"hardware {run['hardware'] or '–'}"
        + (" (pools runs from different hardware)" if run["pooled_hardware"] else "")
        + f"; selection: {selection_text(run['selection'])}",
        f"git {run['git_commit']}",
    ])


def _yes(flag: bool | None) -> str:
    return "yes" if flag else "no"


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


def _style(kind: str, sure: bool | None) -> dict:
    """A point's marker: filled when it is on the Pareto front with two-sided 95 % confidence, hollow when it is
    not (or has no interval), so a reader sees at once which points the data puts on it."""
    style = dict(_STYLE[kind]) | {"label": f"{_STYLE[kind]['label']}, on the front with 95 % confidence"}
    if sure:
        return style
    colour = style.pop("color")
    return style | {"facecolors": "white", "edgecolors": colour, "linewidths": 1.5,
                    "label": f"{_STYLE[kind]['label']}, not surely on the front (hollow)"}
_PUBLISHED_LABEL = "published, real MARS (paper's accuracy; our GMACs at 8x256x128, ResNet-50)"


def _references_for(runs: pl.DataFrame, published: pl.DataFrame | None) -> pl.DataFrame | None:
    # The paper's numbers are real MARS numbers: shown beside runs on real MARS only. On a synthetic panel
    # they would only stretch both axes until the runs' intervals and front are too small to read.
    return published if published is not None and runs["dataset"][0] == "mars" and not runs["synthetic"][0] else None


def _point(ax: Axes, run: dict, acc: str, axis: str, gid: str) -> None:
    """Draw one point with its 95 % interval (and, on the latency axis, its timed range) under SVG id `gid`."""
    x, y = run["cost"], run[f"{acc}_pct"]
    low, high = run[f"{acc}_lo_pct"], run[f"{acc}_hi_pct"]
    yerr = None if low is None else [[y - low], [high - y]]
    # On the latency axis, the timed range (min-max) too: a timing is a sample as well.
    xerr = ([[x - run["latency_min_ms"]], [run["latency_max_ms"] - x]]
            if axis == "latency" and run["latency_min_ms"] is not None else None)
    if yerr or xerr:
        ax.errorbar(x, y, yerr=yerr, xerr=xerr, fmt="none", ecolor=_STYLE[run["kind"]]["color"], elinewidth=1,
                    capsize=3, alpha=0.7, zorder=2.5)
    ax.scatter(x, y, gid=gid, zorder=3, **_style(run["kind"], run[f"sure_{acc}"]))


BULK_LABEL = "sweep trial off the front (grey dot; no interval, label or tooltip; count in the panel's title)"


def _draw_bulk(ax: Axes, trials: pl.DataFrame, acc: str) -> None:
    """Draw sweep trials off the front as one collection of small dots: no intervals, labels or tooltips, which at
    thousands of trials would hide the front and make the SVG huge. Rasterized: one image in the SVG, not a
    shape per dot."""
    ax.scatter(trials["cost"], trials[f"{acc}_pct"], s=6, color="tab:gray", alpha=0.35, linewidths=0, zorder=1.5,
               rasterized=True, label=BULK_LABEL)


def _references(ax: Axes, refs: pl.DataFrame, acc: str, gid: str,
                tips: dict[str, str]) -> list[tuple[float, float, str]]:
    """Draw the paper's points as stars with their tooltips; return their labels."""
    labels = []
    for i, ref in enumerate(refs.iter_rows(named=True)):
        ax.scatter(ref["gmacs"], ref[f"{acc}_pct"], marker="*", s=220, color="tab:orange", edgecolor="black",
                   lw=0.6, zorder=4, gid=f"{gid}-ref{i}", label=_PUBLISHED_LABEL)
        tips[f"{gid}-ref{i}"] = (f"{ref['name']}, published on real MARS: rank-1 {ref['rank1_pct']:.1f} %, "
                                 f"mAP {ref['map_pct']:.1f} %\nour cost model: {ref['gmacs']:.1f} GMACs per clip "
                                 f"at {ref['input']} (T x H x W), width {PAPER_WIDTH}")
        labels.append((ref["gmacs"], ref[f"{acc}_pct"], f"{ref['name']} (published)"))
    return labels


def _point_labels(measured: pl.DataFrame, acc: str, inputs: list[str]) -> list[tuple[float, float, str]]:
    """The (x, y, text) labels of a panel's points: all of them, or beyond MAX_LABELS the front's and presets'."""
    shown = measured if len(measured) <= MAX_LABELS else measured.filter(
        pl.col(f"pareto_{acc}") | (pl.col("kind") == "train"))
    suffix = pl.lit("") if len(inputs) <= 1 else " @" + pl.col("input").fill_null("?")
    odds = pl.when(pl.col(f"p_front_{acc}").is_not_null()).then(
        pl.format(" (P front {})", (pl.col(f"p_front_{acc}") * 100).round(0).cast(pl.Int64).cast(pl.String) + "%")
    ).otherwise(pl.lit(""))
    optimistic = pl.when(pl.col("selection") == "test").then(pl.lit(f" {OPTIMISTIC}")).otherwise(pl.lit(""))
    return shown.select("cost", f"{acc}_pct", pl.col("label") + optimistic + suffix + odds).rows()


def _panel(ax: Axes, runs: pl.DataFrame, refs: pl.DataFrame | None, acc: str, name: str,
           gid: str, tips: dict[str, str], axis: str = "gmacs") -> list[tuple[float, float, str]]:
    """Draw one panel's points with their 95 % intervals (crowded sweep trials off the front in bulk), the front and
    the references; return the (x, y, text) labels to place."""
    measured = runs.with_columns(in_bulk((acc,)).alias("_bulk")).drop_nulls(["cost", acc])
    bulk = measured.filter(pl.col("_bulk"))
    measured = measured.filter(~pl.col("_bulk")).drop("_bulk")
    inputs = runs["input"].drop_nulls().unique().sort().to_list()
    if not bulk.is_empty():
        _draw_bulk(ax, bulk, acc)
    for i, run in enumerate(measured.iter_rows(named=True)):
        _point(ax, run, acc, axis, f"{gid}-{i}")
        tips[f"{gid}-{i}"] = hover_text(run)
    front = measured.filter(pl.col(f"pareto_{acc}")).sort("cost")
    # Ringed points keep a one-run front visible; the step joins the point estimates on the front, but only
    # the filled markers are on it with 95 % confidence.
    ax.step(front["cost"], front[f"{acc}_pct"], where="post", color="tab:red", lw=1.5, zorder=2, marker="o",
            markersize=11, markerfacecolor="none", label="Pareto front of the point estimates")
    labels = [] if refs is None else _references(ax, refs, acc, gid, tips)
    labels += _point_labels(measured, acc, inputs)
    if measured.is_empty() and refs is None:
        ax.text(0.5, 0.5, "no run with both this cost and accuracy yet", transform=ax.transAxes, ha="center")
    else:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(_PlainLog(labelOnlyBase=False))
        ax.xaxis.set_minor_formatter(_PlainLog(labelOnlyBase=False))
    ax.set_xlabel(axis_label(runs, axis))
    ax.set_ylabel(name)
    stars = " (stars: paper, real MARS)" if refs is not None else ""
    crowd = f"\n{bulk.height:,} sweep trials off the front as grey dots, intervals not drawn" if bulk.height else ""
    ax.set_title(f"{runs['group'][0]}: {name.split()[0]} vs cost, 95 % intervals{stars}{crowd}")
    ax.grid(True, which="both", alpha=0.3)
    return labels


def draw(points: pl.DataFrame, published: pl.DataFrame | None, axis: str = "gmacs") -> tuple[Figure, dict[str, str]]:
    """The Pareto figure, a row of rank-1 and mAP panels per dataset group, and its tooltips by SVG id."""
    groups = points["group"].unique(maintain_order=True).to_list()
    fig = Figure(figsize=(14, 5.5 * len(groups)), layout="constrained")
    FigureCanvasAgg(fig)  # no pyplot: no global figure state, no backend switch
    axes = fig.subplots(len(groups), 2, squeeze=False)
    fig.suptitle(f"Accuracy (mean over seeds, 95 % interval over seeds and queries) vs {AXIS_NAMES[axis]}"
                 + (" (GMACs = 1e9 multiply-accumulates)" if axis != "latency" else "")
                 + (f"\n{OPTIMISTIC} {OPTIMISTIC_TEXT}" if (points["selection"] == "test").any() else ""))
    tips: dict[str, str] = {}
    pending = []
    for row, group in enumerate(groups):
        runs = points.filter(pl.col("group") == group)
        refs = _references_for(runs, published)
        for col, (acc, name) in enumerate(PANELS):
            ax = axes[row][col]
            pending.append((ax, _panel(ax, runs, refs, acc, name, f"pt-{row}-{col}", tips, axis)))
    legend = {label: h for ax in axes.flat for h, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(legend.values(), legend.keys(), loc="outside lower center", ncols=min(len(legend), 2))
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


def evaluated_epochs(history: str | None) -> list[dict]:
    """A run's evaluated epochs (those with rank-1 and mAP), in epoch order, from its `history` JSON."""
    found = [e for e in json.loads(history or "[]") if e.get("rank1") is not None and e.get("map") is not None]
    return sorted(found, key=lambda e: e["epoch"])


def _epoch_panel(ax: Axes, runs: pl.DataFrame, acc: str, name: str, gid: str, tips: dict[str, str]) -> None:
    """One group's `acc` (percent) against epoch: a line per seed (SVG id `<gid>-<point>-<seed>`), a colour per
    point."""
    points = runs.select("label", "config_key").unique(maintain_order=True).rows()
    for p, (label, key) in enumerate(points):
        seeds = runs.filter((pl.col("label") == label) & (pl.col("config_key") == key))
        shown = label + (f" {OPTIMISTIC}" if seeds["selection"][0] == "test" else "")
        for s, run in enumerate(seeds.iter_rows(named=True)):
            found = evaluated_epochs(run["history"])
            ax.plot([e["epoch"] for e in found], [100 * e[acc] for e in found], color=f"C{p % 10}", marker="o",
                    markersize=3, lw=1.2, alpha=0.8, gid=f"{gid}-{p}-{s}", label=shown if s == 0 else "_nolegend_")
            tips[f"{gid}-{p}-{s}"] = (f"{shown}, seed {run['seed']}: {name.split()[0]} (%) at epoch " + ", ".join(
                f"{e['epoch']}: {100 * e[acc]:.1f}" for e in found))
    ax.set_xlabel("epoch")
    ax.set_ylabel(name)
    ax.set_title(f"{runs['group'][0]}: {name.split()[0]} at each evaluated epoch")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def draw_epochs(runs: pl.DataFrame) -> tuple[Figure, dict[str, str]] | None:
    """Rank-1 and mAP against epoch, a row of panels per dataset group, one line per seed of each point, and the
    lines' tooltips by SVG id; None where no run recorded a history."""
    runs = runs.filter(pl.col("history").is_not_null())
    if runs.is_empty():
        return None
    groups = runs["group"].unique(maintain_order=True).to_list()
    fig = Figure(figsize=(14, 4.5 * len(groups)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(groups), 2, squeeze=False)
    fig.suptitle("Accuracy at each evaluated epoch, one line per seed"
                 + (f"\n{OPTIMISTIC} {OPTIMISTIC_TEXT}" if (runs["selection"] == "test").any() else ""))
    tips: dict[str, str] = {}
    for row, group in enumerate(groups):
        for col, (acc, name) in enumerate(PANELS):
            _epoch_panel(axes[row][col], runs.filter(pl.col("group") == group), acc, name, f"epoch-{row}-{col}", tips)
    return fig, tips
