"""The report's tables, as rows of text cells for benchmark.md and the HTML page, and benchmark.md itself."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import polars as pl

from harness.config import PAPER_INPUT
from harness.report.runs import AXIS_NAMES, PANELS
from harness.report.testsets import notes


def fmt(value, spec: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def latency_text(run: dict) -> str:
    """Median latency in ms, with 'noisy' when its range or the competing load was too wide to trust."""
    return fmt(run["latency_ms"], ".1f") + (" noisy" if run.get("latency_noisy") else "")


SURE, FRONT = "★", "☆"  # on the front with two-sided 95 % confidence; on the point estimates' front only
POOLED = "†"  # a point pooling runs from different hardware
OPTIMISTIC = "‡"  # a point whose epochs were chosen on the test set
OPTIMISTIC_TEXT = "optimistic (best epoch chosen on the test set)"
NOT_MEASURED = "seed variation not measured"


@dataclass(frozen=True)
class Table:
    """A table of text cells under an optional title, with the paragraphs before and after it."""

    title: str
    head: list[str]
    rows: list[list[str]]
    before: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)


MAIN_HEAD = ["Pareto", "point", "seeds", "GMACs", "latency (ms)", "rank-1 [95 % interval]", "± seeds",
             "P(front) rank-1", "mAP [95 % interval]", "± seeds", "P(front) mAP", "hardware"]
DETAILS_HEAD = ["point", "dataset", "kind", "input", "params (M)", "GMACs/tracklet", "test sampler", "latency on",
                "selection", "mINP", "rank-5", "rank-10", "rank-20", "MLflow run", "git commit"]


def _short_commit(commit: str | None) -> str:
    commit = commit or "–"
    return commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")


def interval_text(point: dict, metric: str) -> str:
    """'26.0 [22.9, 29.2]': the point's mean (percent) and its 95 % interval, or the mean alone without one."""
    mean, low, high = point[f"{metric}_pct"], point[f"{metric}_lo_pct"], point[f"{metric}_hi_pct"]
    return fmt(mean, ".1f") + ("" if low is None else f" [{low:.1f}, {high:.1f}]")


def plus_minus(point: dict, metric: str) -> str:
    """'26.0 ± 3.1': the mean and half the width of its 95 % interval (percent), or the mean alone without one."""
    mean, low, high = point[f"{metric}_pct"], point[f"{metric}_lo_pct"], point[f"{metric}_hi_pct"]
    return fmt(mean, ".1f") + ("" if low is None else f" ± {(high - low) / 2:.1f}")


def front_text(point: dict) -> str:
    """'★ rank-1, ☆ mAP': per panel, sure to be on the front (★) or on the point estimates' front only (☆)."""
    marks = [f"{SURE if point[f'sure_{acc}'] else FRONT} {name.split()[0]}" for acc, name in PANELS
             if point[f"sure_{acc}"] or point[f"pareto_{acc}"]]
    return ", ".join(marks)


def point_text(point: dict) -> str:
    """The point's label, marked ‡ where its epochs were chosen on the test set."""
    return point["label"] + (f" {OPTIMISTIC}" if point["selection"] == "test" else "")


def hardware_text(point: dict) -> str:
    """The hardware its runs trained on, marked † where they differ."""
    return (point["hardware"] or "–") + (f" {POOLED}" if point["pooled_hardware"] else "")


def seed_spread(point: dict, metric: str) -> str:
    """The sample std over seeds (points of percent), or 'not measured' with one seed."""
    return fmt(point[f"{metric}_std_pct"], ".1f") if point["seed_measured"] else "not measured"


def main_rows(points: pl.DataFrame) -> list[list[str]]:
    """One row of MAIN_HEAD per point (a configuration over its seeds), accuracy in percent."""
    return [[front_text(r), point_text(r), str(r["seeds"]), fmt(r["gmacs"], ".3g"), latency_text(r),
             interval_text(r, "rank1"), seed_spread(r, "rank1"), fmt(r["p_front_rank1"], ".2f"),
             interval_text(r, "map"), seed_spread(r, "map"), fmt(r["p_front_map"], ".2f"), hardware_text(r)]
            for r in points.iter_rows(named=True)]


def selection_text(selection: str | None) -> str:
    """How a point's scored epochs were chosen, in words."""
    return {"test": OPTIMISTIC_TEXT, "last": "last epoch"}.get(selection, selection or "–")


def details_rows(points: pl.DataFrame) -> list[list[str]]:
    """One row of DETAILS_HEAD per point: what the main table leaves out."""
    return [[point_text(r), r["group"], r["kind"], r["input"] or "–", fmt(r["params_m"], ".2f"),
             fmt(r["gmacs_tracklet"], ".3g"), r["eval_sampler"] or "–", r["latency_device"] or "–",
             selection_text(r["selection"]),
             *(fmt(r[f"{m}_pct"], ".1f") for m in ("minp", "rank5", "rank10", "rank20")),
             r["run_id"] or "–", _short_commit(r["git_commit"])] for r in points.iter_rows(named=True)]


def point_notes(points: pl.DataFrame) -> list[str]:
    """The notes under a group's main table: optimistic points, points pooling hardware, unmeasured seed spread."""
    def labels(column: pl.Expr) -> str:
        return ", ".join(points.filter(column)["label"])

    notes_ = []
    if (points["selection"] == "test").any():
        notes_.append(f"{OPTIMISTIC} {OPTIMISTIC_TEXT}: {labels(pl.col('selection') == 'test')}. Each seed's "
                      f"scores are of the epoch that scored best on this very test set, so they overstate what the "
                      f"training does on queries not used to choose it.")
    pooled = points.filter(pl.col("pooled_hardware"))
    if not pooled.is_empty():
        which = "; ".join(f"{r['label']} ({r['hardware']})" for r in pooled.iter_rows(named=True))
        notes_.append(f"{POOLED} pools runs from different hardware: {which}. The spread over seeds includes the "
                      f"hardware's effect; the latency was timed on one of them.")
    if not points["seed_measured"].all():
        notes_.append(f"One seed, {NOT_MEASURED}: {labels(~pl.col('seed_measured'))}. The interval covers the "
                      f"test set's queries only.")
    return notes_


PER_SEED_HEAD = ["point", "seed", "rank-1", "mAP"]
PER_SEED_INTRO = ("Each seed's rank-1 and mAP (percent) at its scored epoch: the runs behind each point's mean, "
                  "shown one by one so the spread is seen, not only summarised.")


def _percent(fraction: float | None) -> str:
    return fmt(None if fraction is None else 100 * fraction, ".1f")


def per_seed_rows(points: pl.DataFrame) -> list[list[str]]:
    """One row of PER_SEED_HEAD per run of each point that knows its runs' scores (sweep trials do not)."""
    rows = []
    for r in points.iter_rows(named=True):
        for seed, rank1, mean_ap in zip(r["seed_list"] or (), r["rank1_per_seed"] or (), r["map_per_seed"] or ()):
            rows.append([point_text(r), fmt(seed, "d"), _percent(rank1), _percent(mean_ap)])
    return rows


COMPARISON_HEAD = ["A", "B", "metric", "A − B [95 % interval]", "decided", "p", "p (Holm)",
                   "P(run of A > run of B)", "MDD", "seeds to decide"]
COMPARISON_INTRO = ("Every two trained points of a group, A − B in points of percent with its 95 % interval. "
                    "P(run of A > run of B): rliable's probability of improvement, over every pair of their runs "
                    "(a tie counts half). MDD: the smallest paired difference (points) a comparison at these seeds "
                    "detects with 80 % power, two-sided 5 %. Seeds to decide: seeds per point at which the observed "
                    "difference would be decided with 80 % power; none where the test set's own noise prevents it.")
_METRICS = (("rank1", "rank-1"), ("map", "mAP"))


def _p(value: float) -> str:
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def comparison_rows(pairs: list[dict]) -> list[list[str]]:
    """One row of COMPARISON_HEAD per pair and metric."""
    rows = []
    for c in pairs:
        for key, name in _METRICS:
            found = c[key]
            decided = ("yes, survives Holm" if found["decided_holm"] else "yes") if found["decided"] else "no"
            needed = "none (test-set noise)" if found["seeds_needed"] is None else str(found["seeds_needed"])
            rows.append([c["a"], c["b"], name, f"{100 * found['diff']:+.1f} [{100 * found['lo']:+.1f}, "
                         f"{100 * found['hi']:+.1f}]", decided, _p(found["p"]), _p(found["p_holm"]),
                         f"{found['p_improve']:.2f}", f"{100 * found['mdd']:.1f}", needed])
    return rows


def family_text(pairs: list[dict]) -> str:
    """The pairing used, the family's size, what 'decided' controls and how many comparisons survive Holm."""
    by_pairing: dict[str, list[str]] = {}
    for c in pairs:
        by_pairing.setdefault(c["pairing"], []).append(f"{c['a']} − {c['b']}")
    pairing = "; ".join(f"{how} ({', '.join(names)})" for how, names in by_pairing.items()) \
        if len(by_pairing) > 1 else f"{next(iter(by_pairing))}, every pair"
    found = [c[key] for c in pairs for key, _ in _METRICS]
    decided, holm = sum(f["decided"] for f in found), sum(f["decided_holm"] for f in found)
    return (f"Pairing: {pairing}. {max(c['family'] for c in pairs)} comparisons in this group's family. "
            f"Decided is per comparison (its own 95 % interval excludes 0) and does not control the family-wise "
            f"error: {decided} of {len(found)} are decided; {holm} {'survives' if holm == 1 else 'survive'} Holm's "
            f"adjustment (p (Holm) < 0.05).")


def _spread(values: list[float], name: str) -> str:
    """'2.1 points of rank-1', with '(median; 1.5–3.0)' over several values (points of percent)."""
    text = f"{statistics.median(values):.1f} points of {name}"
    return text if len(values) == 1 else f"{text} (median; {min(values):.1f}–{max(values):.1f})"


def resolution_text(pairs: list[dict]) -> str:
    """The smallest paired differences this group's comparisons could detect, per metric, over its pairs."""
    seeds = sorted({c[key]["seeds"] for c in pairs for key, _ in _METRICS})
    at = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}"
    parts = [_spread([100 * c[key]["mdd"] for c in pairs], name) for key, name in _METRICS]
    return (f"Resolution: at {at} seed(s) per point, a paired comparison detects (80 % power, two-sided 5 %) a "
            f"difference of {parts[0]} and {parts[1]}, over {len(pairs)} pair(s); smaller true differences "
            f"go undecided more often than not.")


# Above this many sweep trials in a group, a trial on neither front (of the point estimates, nor surely on it) is
# shown only in bulk: no table row, drawn interval, label or tooltip of its own. Past a few hundred, per-point
# intervals merge into one cloud that hides the front, and every trial's row and tooltip make pareto.html megabytes.
# Presets and front trials are always shown one by one.
MANY_TRIALS = 300


def in_bulk(accs: tuple[str, ...]) -> pl.Expr:
    """True for the sweep trials of one group to show only in bulk: off every front of the `accs` panels, in a group
    of more than MANY_TRIALS trials."""
    trial = pl.col("kind") == "trial"
    front = pl.any_horizontal(*(pl.col(f"{flag}_{acc}").fill_null(False)
                                for acc in accs for flag in ("pareto", "sure")))
    return trial & ~front & (trial.sum() > MANY_TRIALS)


def left_out_text(left: pl.DataFrame) -> str:
    """The line saying how many of a group's sweep trials its tables leave out, and where all of them are listed."""
    sweeps = ", ".join(left["parent_run_id"].drop_nulls().unique().sort())
    return (f"{left.height:,} more sweep trials, on neither front, are left out of this group's tables (above "
            f"{MANY_TRIALS} trials a group lists only its presets and front trials); every trial is in its sweep's "
            f"own results table (results.parquet of sweep {sweeps or '–'}) and in pareto.csv.")


def group_tables(points: pl.DataFrame, pairs: list[dict]) -> list[Table]:
    """One group's tables: its points, their details, their runs' scores and their paired comparisons."""
    bulk = points.select(in_bulk(tuple(acc for acc, _ in PANELS))).to_series()
    left, points = points.filter(bulk), points.filter(~bulk)
    said = [left_out_text(left)] if left.height else []
    tables = [Table("", MAIN_HEAD, main_rows(points), after=said + point_notes(points)),
              Table("Details", DETAILS_HEAD, details_rows(points))]
    seeds = per_seed_rows(points)
    if seeds:
        tables.append(Table("Per-seed scores", PER_SEED_HEAD, seeds, before=[PER_SEED_INTRO]))
    if pairs:
        tables.append(Table("Comparisons", COMPARISON_HEAD, comparison_rows(pairs), before=[COMPARISON_INTRO],
                            after=[family_text(pairs), resolution_text(pairs)]))
    return tables


def decided_text(c: dict, key: str, name: str) -> str:
    """'nvan beats baseline on mAP by 2.1 points [0.4, 3.8]', for a decided comparison."""
    found = c[key]
    winner, loser, sign = (c["a"], c["b"], 1) if found["diff"] > 0 else (c["b"], c["a"], -1)
    return (f"{winner} beats {loser} on {name} by {100 * sign * found['diff']:.1f} points "
            f"[{100 * min(sign * found['lo'], sign * found['hi']):.1f}, {100 * max(sign * found['lo'], sign * found['hi']):.1f}]")


def intro(axis: str) -> list[tuple[str, str]]:
    """What the tables and the figure show, as (term, meaning) items: a point, its interval, P(front), the front,
    comparisons, hardware and selection, the units of cost and where latency comes from."""
    return [
        ("Point", "one configuration; its accuracy (percent, scored epoch, primary protocol) is the mean over its "
                  "seeds."),
        ("Interval", "95 %, a t interval from variance components: seeds (t with R − 1 degrees of freedom for R "
                     "seeds), identity-clustered queries (t with G − 1 for G identity clusters) and the residual, "
                     "each part with its own critical value, combined in quadrature. ± seeds: the sample std over "
                     f"seeds; with one seed, {NOT_MEASURED}: the interval covers the test set only."),
        ("P(front)", "the share of draws from the points' approximate sampling distribution (seed part t, query "
                     "part a wild identity-cluster multiplier shared by points on the same queries) in which no "
                     f"other point dominates it. {SURE}: on the front with two-sided 95 % confidence (every "
                     f"cheaper-or-equal point decidedly less accurate); {FRONT}: on the point estimates' front only."),
        ("Front", f"max accuracy, min {AXIS_NAMES[axis]}, within each "
                  f"{'dataset and device' if axis == 'latency' else 'dataset'}."),
        ("Comparisons", "decided: the comparison's own 95 % interval excludes 0. That does not control the "
                        "family-wise error over a group's comparisons; p (Holm) does, and the line under each "
                        "table says how many survive it."),
        ("Hardware", f"the CPU (and GPU) the point's runs trained on; {POOLED} marks a point pooling runs from "
                     "different hardware."),
        ("Selection", f"{OPTIMISTIC}: {OPTIMISTIC_TEXT}; unmarked points report their last epoch."),
        ("GMACs", "1e9 multiply-accumulates (not FLOPs) per clip at the run's input, T x H x W."),
        ("GMACs/tracklet", "per test tracklet, mean over the test set, under the run's test sampler (dense runs "
                           "ceil(F / T) clips of a tracklet of F frames, the others one)."),
        ("Latency", "median ms per batch of 1 clip of the BN-folded model that evaluation runs, timed with one "
                    "training worker's resources on the device in 'latency on'; noisy when its range exceeds 25 % of "
                    "the median or other work used more than a quarter of a core meanwhile."),
    ]


def published_rows(published: pl.DataFrame) -> list[list[str]]:
    """One row of PUBLISHED_HEAD per paper result."""
    return [[r["name"], f"{r['rank1_pct']:.1f}", f"{r['map_pct']:.1f}", f"{r['gmacs']:.2f}"]
            for r in published.iter_rows(named=True)]


PUBLISHED_HEAD = ["published model", "rank-1", "mAP", f"GMACs at {PAPER_INPUT.label()} (ours)"]


COST_HEAD = ["preset", "input T×H×W", "width", "params (M)", "GMACs", "batch", "latency (ms)", "range (ms)",
             "threads", "device", "peak memory (MiB)"]



def cost_rows(records: list[dict]) -> list[list[str]]:
    """One row of COST_HEAD per cost record; latency and peak memory are per batch."""
    rows = []
    for r in records:
        lat = r.get("latency") or {}
        median = None if not lat else 1e3 * lat["median_s"]
        span = f"{1e3 * lat['min_s']:.1f}-{1e3 * lat['max_s']:.1f}" if lat else "–"
        rows.append([r["name"], r["input"], str(r["model_width"]), f"{r['params'] / 1e6:.2f}", f"{r['gmacs']:.3g}",
                     str(r.get("batch", "–")), fmt(median, ".1f") + (" noisy" if lat.get("noisy") else ""), span,
                     str(lat.get("threads", "–")), lat.get("device", "–"), fmt(r.get("peak_memory_mb"), ".1f")])
    return rows


COST_INTRO = ("Every preset at the paper's input and width and as this benchmark trains it, from "
              "`python -m harness.cost`: GMACs per clip; latency (median and range of the timed runs) and peak "
              "memory per batch of the BN-folded model that evaluation runs, measured on the device named, on "
              "the machine that ran the cost stage.")


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    cells = [head, ["---"] * len(head), *rows]
    return ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]


def _md_block(table: Table) -> list[str]:
    """A Table as markdown lines: its title (a level-3 heading), paragraphs before, the table, paragraphs after."""
    lines = [f"### {table.title}", ""] if table.title else []
    for paragraph in table.before:
        lines += [paragraph, ""]
    lines += [*_md_table(table.head, table.rows), ""]
    for paragraph in table.after:
        lines += [paragraph, ""]
    return lines


def markdown(points: pl.DataFrame, published: pl.DataFrame | None, source: str,
             costs: list[dict] | None = None, axis: str = "gmacs", comparisons: list[dict] = ()) -> str:
    """benchmark.md: an intro, each dataset group's tables (points, details, per-seed scores, comparisons), the
    cost table and the paper's numbers."""
    lines = ["# nvan-bench benchmark", "", f"From {source}.", "",
             *(f"- **{term}**: {meaning}" for term, meaning in intro(axis)), ""]
    not_compared = notes(points)
    if not_compared:
        lines += [*(f"- {n}" for n in not_compared), ""]
    for group in points["group"].unique(maintain_order=True):
        lines += [f"## {group}", ""]
        for table in group_tables(points.filter(pl.col("group") == group),
                                  [c for c in comparisons if c["group"] == group]):
            lines += _md_block(table)
    if costs:
        lines += _md_block(Table("", COST_HEAD, cost_rows(costs), before=["## Cost of each preset", COST_INTRO]))
    if published is not None:
        lines += _md_block(Table("", PUBLISHED_HEAD, published_rows(published),
                                 before=["## Published reference (real MARS, Liu et al. BMVC 2019)"]))
    return "\n".join(lines)
