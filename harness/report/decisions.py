"""The report's section on sequential decisions: one row per decision record (`harness.train --until-decided`)."""

from __future__ import annotations

from harness.results.decisions import SAID, Decision


def decisions_section(decisions: list[Decision]) -> str:
    """Markdown: each comparison's verdict, why it stopped, the seeds it used of its budget, A - B with its repeated
    95 % interval at the last look (points of percent) and the compute spent; empty without decisions."""
    if not decisions:
        return ""
    lines = ["", "## Sequential decisions", "",
             "Trained until decided (`harness.train --until-decided`): a group-sequential test after each round of "
             "seeds (Lan-DeMets O'Brien-Fleming spending, exact t levels, non-binding futility), so the repeated "
             "looks keep the false-decision rate at 5 %. The interval is the repeated 95 % interval at the last "
             "look's nominal level; futile: even the maximum seeds would probably not decide it.", "",
             "| A − B | score | verdict | seeds per arm (of at most) | looks | A − B [repeated 95 %] | level at the "
             "last look | training (seeds summed) | device-hours |", "|---|---|---|---|---|---|---|---|---|"]
    for d in decisions:
        last = d.looks[-1]
        unit, hours = d.device_hours
        lines.append(f"| {d.a} − {d.b} | {d.score} ({d.protocol}) | {SAID.get(d.verdict, d.verdict)} | {d.seeds} "
                     f"({d.plan.max_seeds}) | {len(d.looks)} | {last.diff:+.2f} [{last.lo:.2f}, {last.hi:.2f}] | "
                     f"{last.level:.4f} | {d.compute.train_s / 3600:.2f} h | {hours:.2f} {unit.replace('_', '-')} "
                     f"on {d.compute.device} |")
    return "\n".join(lines) + "\n"
