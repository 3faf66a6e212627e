"""Speed and size of the report with a sweep of 10,000 trials beside the three committed presets: above
harness.report.tables.MANY_TRIALS trials, those off both fronts are drawn as one collection of dots and left out of
the tables, so the figure, pareto.html and benchmark.md stay readable.

Run: pytest tests/benchmarks/test_report_scale.py --benchmark-only -n 0
One timed round of build_report (every file it writes; 200 P(front) draws for the presets, the sweep's trials come
assessed; a point file per trial in metrics/). The SVG, page and markdown sizes and the tooltips are in extra_info. No
timing asserts. Measured on 2 busy AMD EPYC cores: 18.3 s, 0.5 MB of SVG. Before the bulk drawing, 1,000 trials took
42 s (3.3 MB of SVG); 10,000 had not finished after 17 minutes (13 of them to the PNG).
"""

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from harness.report.build import build_report

ROOT = Path(__file__).resolve().parents[2]
PRESETS = ("baseline", "nvan", "ste_nvan")


def sweep_table(path: Path, trials: int, seed: int = 0) -> Path:
    """A sweep's results.parquet of `trials` finished trials aggregated over 3 seeds, accuracy rising with cost;
    the sweep calls the best half percent surely on its front."""
    rng = np.random.default_rng(seed)
    gmacs = rng.uniform(0.01, 0.2, trials)
    rank1 = np.clip(0.15 + 0.08 * np.log(gmacs / 0.01) + rng.normal(0, 0.05, trials), 0.01, 0.99)
    mean_ap = np.clip(0.6 * rank1 + rng.normal(0, 0.02, trials), 0.01, 0.99)
    half = rng.uniform(0.01, 0.04, trials)
    sure = rank1 - 0.05 * np.log(gmacs) > np.quantile(rank1 - 0.05 * np.log(gmacs), 0.995)
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({
        "label": [f"t{i:05d}" for i in range(trials)], "status": ["finished"] * trials, "rank1": rank1,
        "map": mean_ap, "minp": mean_ap / 2, "gmacs_input": gmacs, "dataset": ["mars"] * trials,
        "synthetic": [True] * trials, "input": ["8x64x32"] * trials,
        "mlflow_run_id": [f"{i:032x}" for i in range(trials)], "git_commit": ["c" * 40] * trials,
        "seeds": [3] * trials,
        **{f"{m}_{s}": v + sign * half for m, v in (("rank1", rank1), ("map", mean_ap))
           for s, sign in (("lo", -1), ("hi", 1))},
        **{f"{m}_std": half for m in ("rank1", "map")},
        "p_front_rank1": np.where(sure, 0.95, 0.05), "p_front_map": np.where(sure, 0.9, 0.05), "sure_rank1": sure,
        "sure_map": sure,
    }).write_parquet(path)
    return path


@pytest.mark.parametrize("trials", [10_000])
def test_report_with_a_large_sweep(benchmark, tmp_path, trials):
    benchmark.group = f"report of 3 presets and {trials:,} sweep trials"
    sweep = sweep_table(tmp_path / "sweeps" / "demo" / "results.parquet", trials)
    out = tmp_path / "report"
    records = [ROOT / "reports" / "runs" / p for p in PRESETS]
    _, points, _ = benchmark.pedantic(build_report, args=(out,),
                                      kwargs={"records": records, "sweeps": [sweep], "dataset": "mars", "draws": 200},
                                      rounds=1, iterations=1)
    assert len(points) == trials + len(PRESETS)
    page, md = (out / "pareto.html").read_text(), (out / "benchmark.md").read_text()
    svg = page[page.index("<svg"):page.index("</svg>")]
    benchmark.extra_info |= {"svg_bytes": len(svg.encode()), "html_bytes": len(page.encode()),
                             "md_bytes": len(md.encode()), "tooltips": svg.count('class="point"'),
                             "png_bytes": (out / "pareto.png").stat().st_size}
    assert "more sweep trials, on neither front, are left out" in md
