"""python -m harness.train --until-decided: both arms train in rounds of seeds in one Ray session, a group-sequential
look after each round, the decision written beside the records; a resume replays the looks from the records."""

from __future__ import annotations

import json

import pytest

from harness.evaluate.sequential import VERDICTS
from harness.results.decisions import SAID
from harness.results.records import read_record


@pytest.mark.slow(seconds=240, cores=2)
def test_until_decided_trains_in_rounds_and_a_resume_replays_the_looks(cli, tiny_sets, tmp_path):
    out = tmp_path / "decide"
    args = [*tiny_sets, "--set", "train.epochs=1", "--until-decided", "--against", "baseline", "--max-seeds", "3",
            "--out", str(out)]
    done = cli("harness.train", *args, "--name", "d")
    assert done.returncode == 0, done.stderr[-3000:]
    decision = json.loads((out / "decision.json").read_text())
    looks = decision["looks"]
    assert (decision["a"], decision["b"], decision["score"]) == ("nvan", "baseline", "rank1")
    assert [look["seeds"] for look in looks] == list(range(2, decision["seeds"] + 1))
    assert all(look["verdict"] == "continue" for look in looks[:-1]) and decision["verdict"] == looks[-1]["verdict"]
    assert decision["verdict"] in VERDICTS and decision["verdict"] != "continue"
    # Each round trains only the seeds it adds, both arms side by side.
    assert [look["trained"] for look in looks] == [4] + [2] * (len(looks) - 1)
    assert all(look["startup_s"] > 0 for look in looks)
    levels = [look["level"] for look in looks]
    assert levels == sorted(levels) and levels[-1] < 0.05  # alpha spent look by look, never a fresh 5 %
    for preset in ("nvan", "baseline"):
        for seed in range(decision["seeds"]):
            record = read_record(out / preset / f"seed{seed}.json")
            assert record.status == "finished" and record.config.seed == seed
    seconds = sum(read_record(out / p / f"seed{s}.json").run.seconds for p in ("nvan", "baseline")
                  for s in range(decision["seeds"]))
    assert decision["compute"]["train_s"] == pytest.approx(seconds, abs=0.1)

    # The report states the verdict, the seeds, the interval and the compute.
    shown = cli("harness.report", "--runs", str(out / "nvan"), "--runs", str(out / "baseline"), "--decision",
                str(out / "decision.json"), "--out-dir", str(tmp_path / "report"))
    assert shown.returncode == 0, shown.stderr[-3000:]
    last = looks[-1]
    assert (f"| nvan − baseline | rank1 (mars-official) | {SAID[decision['verdict']]} | {decision['seeds']} (3) | "
            f"{len(looks)} | {last['diff']:+.2f} [{last['lo']:.2f}, {last['hi']:.2f}] |"
            in (tmp_path / "report" / "benchmark.md").read_text())

    again = cli("harness.train", *args, "--resume", "d")
    assert again.returncode == 0, again.stderr[-3000:]
    replayed = json.loads((out / "decision.json").read_text())
    assert [look["trained"] for look in replayed["looks"]] == [0] * len(looks)
    same = ("seeds", "verdict", "level", "diff", "lo", "hi")
    assert [{k: look[k] for k in same} for look in replayed["looks"]] == [{k: look[k] for k in same} for look in looks]


@pytest.mark.parametrize("extra, message", [
    (["--until-decided", "--max-seeds", "3"], "--until-decided needs --against PRESET"),
    (["--until-decided", "--against", "baseline"], "and --max-seeds N"),
    (["--until-decided", "--against", "nvan", "--max-seeds", "3"], "compare model.preset=nvan with another preset"),
    (["--until-decided", "--against", "baseline", "--max-seeds", "3", "--first-seeds", "1"], "2 <= --first-seeds"),
    (["--against", "baseline"], "--against goes with --until-decided"),
    (["--until-decided", "--against", "nope", "--max-seeds", "3"], "nope"),
])
def test_until_decided_usage_errors_exit_2(cli, tiny_sets, extra, message):
    done = cli("harness.train", *tiny_sets, *extra)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
