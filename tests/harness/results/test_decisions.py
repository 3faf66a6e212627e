"""Decision records (harness/results/decisions.py): written whole, read back as written, and a bad file is a user
error naming it; the report's section shows each verdict with its seeds, interval and compute."""

from __future__ import annotations

import json

import pytest

from harness.errors import UserError
from harness.report.decisions import decisions_section
from harness.results.decisions import read_decision, write_decision

DECISION = {
    "a": "nvan", "b": "baseline", "score": "rank1", "protocol": "mars-official", "name": "d",
    "plan": {"first": 2, "max_seeds": 5, "step": 1, "alpha": 0.05, "spending": "Lan-DeMets O'Brien-Fleming"},
    "verdict": "decided", "seeds": 4,
    "looks": [{"seeds": 2, "verdict": "continue", "level": 0.0008, "diff": 3.0, "lo": -90.0, "hi": 96.0,
               "trained": 4, "round_s": 120.5, "startup_s": 40.2},
              {"seeds": 4, "verdict": "decided", "level": 0.0191, "diff": 16.05, "lo": 6.28, "hi": 25.82,
               "trained": 2, "round_s": 60.0, "startup_s": None}],
    "compute": {"train_s": 7956.0, "core_hours": 2.21, "device": "cpu: AMD EPYC"},
}


def test_a_decision_reads_back_and_reports(tmp_path):
    path = tmp_path / "decision.json"
    write_decision(path, DECISION)
    found = read_decision(path)
    assert (found.a, found.seeds, found.looks[-1].diff, found.device_hours) == ("nvan", 4, 16.05, ("core_hours", 2.21))
    section = decisions_section([found])
    assert "| nvan − baseline | rank1 (mars-official) | decided | 4 (5) | 2 | +16.05 [6.28, 25.82] | 0.0191 | " \
           "2.21 h | 2.21 core-hours on cpu: AMD EPYC |" in section
    assert decisions_section([]) == ""


@pytest.mark.parametrize("text, says", [
    (None, "does not exist"),
    ("{not json", "cannot be read as JSON"),
    (json.dumps({"schema": "something else"}), "is not a decision record of this version"),
    (json.dumps({"schema": "nvan-bench decision 1"} | DECISION | {"seeds": "four"}), "seeds: Input should be"),
    (json.dumps({"schema": "nvan-bench decision 1"} | DECISION | {"looks": []}), "looks: List should have"),
])
def test_a_bad_decision_record_is_a_user_error_naming_it(tmp_path, text, says):
    path = tmp_path / "decision.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(UserError) as found:
        read_decision(path)
    assert str(path) in str(found.value) and says in str(found.value) and "--until-decided" in str(found.value)
