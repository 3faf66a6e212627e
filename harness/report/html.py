"""pareto.html: the figure with hover tooltips and the report's tables, in one offline page that reads at any width."""

from __future__ import annotations

import html

import polars as pl

from harness.report.tables import (COST_HEAD, COST_INTRO, PUBLISHED_HEAD, Table, cost_rows, group_tables, intro,
                                   published_rows)
from harness.report.testsets import notes

# A wide table scrolls inside its own box instead of widening the page; its cells keep each number on one line.
_STYLE = """
body { font-family: sans-serif; margin: 1.5em; }
p, ul { max-width: 60em; }
svg { max-width: 100%; height: auto; }
.point { cursor: help; }
.point:hover { filter: drop-shadow(0 0 3px crimson); }
.scroll { overflow-x: auto; margin-bottom: 1em; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
td { white-space: nowrap; }
"""
EPOCHS_INTRO = ("Rank-1 and mAP (percent) at each evaluated epoch of every run behind the report's points: one line "
                "per seed, one colour per point. Hover a line for its point and seed.")
NO_EPOCHS = ("No run of this report recorded its accuracy at each evaluated epoch (records from before run records "
             "kept a history, MLflow runs and sweep trials do not).")


def _table(head: list[str], rows: list[list[str]]) -> str:
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    head_cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f'<div class="scroll"><table><tr>{head_cells}</tr>{cells}</table></div>'


def _block(table: Table) -> str:
    """A Table as HTML: its title (h3), paragraphs before, the table, paragraphs after."""
    title = f"<h3>{html.escape(table.title)}</h3>" if table.title else ""
    before = "".join(f"<p>{html.escape(p)}</p>" for p in table.before)
    after = "".join(f"<p>{html.escape(p)}</p>" for p in table.after)
    return title + before + _table(table.head, table.rows) + after


def html_page(svg: str, points: pl.DataFrame, published: pl.DataFrame | None, source: str,
              costs: list[dict] | None = None, axis: str = "gmacs", comparisons: list[dict] = (),
              epochs: str | None = None) -> str:
    """pareto.html: what the page shows as a short list, the Pareto figure, then each dataset group's tables, the
    accuracy-against-epoch figure (`epochs`, inline SVG), the cost table and the paper's numbers; inline and
    offline."""
    terms = "".join(f"<li><b>{html.escape(t)}</b>: {html.escape(m)}</li>" for t, m in intro(axis))
    parts = [f"<p>{html.escape(n)}</p>" for n in notes(points)]
    for group in points["group"].unique(maintain_order=True):
        tables = group_tables(points.filter(pl.col("group") == group), [c for c in comparisons if c["group"] == group])
        parts.append(f"<h2>{html.escape(group)}</h2>" + "".join(_block(t) for t in tables))
    parts.append("<h2>Accuracy against epoch</h2>"
                 + (f"<p>{html.escape(EPOCHS_INTRO)}</p>{epochs}" if epochs else f"<p>{html.escape(NO_EPOCHS)}</p>"))
    if costs:
        parts.append(f"<h2>Cost of each preset</h2><p>{html.escape(COST_INTRO)}</p>"
                     + _table(COST_HEAD, cost_rows(costs)))
    if published is not None:
        parts.append("<h2>Published reference (real MARS)</h2>" + _table(PUBLISHED_HEAD, published_rows(published)))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>nvan-bench: accuracy vs cost</title>
<style>{_STYLE}</style></head><body>
<h1>nvan-bench: accuracy vs cost</h1>
<p>From {html.escape(source)}.</p>
<ul>{terms}</ul>
<p>Hover a point for its run's config and metrics.</p>
{svg}
{"".join(parts)}
</body></html>
"""
