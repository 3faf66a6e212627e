"""A run record is read by its schema: any field a reader uses that is malformed is a user error naming the file, the
field, its value and what was expected (exit 2, one paragraph), and the hint names only what exists."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.config import Config
from harness.results.records import history_of, read_record, run_record, write_record
from models.presets import preset_spec

ROOT = Path(__file__).resolve().parents[3]
GOOD = json.loads((ROOT / "reports" / "runs" / "nvan" / "seed0.json").read_text())


def edited(path: list[str], value) -> dict:
    record = copy.deepcopy(GOOD)
    *parents, key = path
    section = record
    for parent in parents:
        section = section[parent]
    section[key] = value
    return record


@pytest.mark.parametrize("field, value, expected", [
    ("run.finished_at", "yesterday", "a UTC time written as 1970-01-01T00:00:00Z"),
    ("run.finished_at", 1733338860, "a valid string"),
    ("run.mlflow_run_id", 7, "a valid string"),
    ("run.mlflow_run_id", "not an id", "a string matching"),
    ("run.ray_run", "../escape", "a string matching"),
    ("run.seconds", "61", "a valid number"),
    ("run.device", ["cpu"], "a valid string"),
    ("run.workers", 0, "greater than or equal to 1"),
    ("run", "done", "a JSON object"),
    ("config.seed", "zero", "a valid integer"),
    ("config.seed", True, "a valid integer"),
    ("config.train", 7, "a JSON object"),
    ("config.train.epochs", "30", "a valid integer"),
    ("cost.latency.noisy", "yes", "a valid boolean"),
    ("cost.eval_sampler", 3, "a valid string"),
    ("scores.mars-official.rank1", "0.5", "a valid number"),
    ("dataset.synthetic", "true", "a valid boolean"),
    ("status", "done", "'running', 'finished', 'preempted'"),
    ("epochs", -3, "greater than or equal to 0"),
    ("best_epoch", 1.5, "a valid integer"),
    ("input", "big", "a string matching"),
    ("selection", "best", "'last' or 'test'"),
    ("selection", None, "'last' or 'test'"),
    ("history", [{"epoch": 2, "loss": 1.0, "lr": 0.001}], "one entry per epoch, numbered 1, 2, ... in order"),
    ("history", {"1": {"loss": 1.0}}, "a valid list"),
])
def test_a_malformed_field_is_a_user_error_naming_it(cli, tmp_path, field, value, expected):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(edited(field.split("."), value)))
    done = cli("harness.report", "--runs", str(path), "--out-dir", str(tmp_path / "out"))
    err = done.stderr.strip()
    assert done.returncode == 2 and "Traceback" not in err and "\n" not in err, err
    assert f"{path} has fields" in err and f"{field} = {value!r}" in err and f"expected {expected}" in err, err
    assert "correct it" in err and len(err) < 1500
    assert not (tmp_path / "out").exists()


def test_a_huge_value_is_echoed_bounded(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(edited(["run", "finished_at"], "x" * 100_000)))
    with pytest.raises(UserError, match=r"run\.finished_at = 'x+\.\.\.x+'") as found:
        read_record(path)
    assert len(str(found.value)) < 1500


@pytest.mark.parametrize("where, stage", [
    ("nonexistent", None),
    ("nonexistent.json", None),
    ("reports/runs/nonexistent/seed0.json", None),
    ("reports/runs/nvan/seed7.json", "nvan"),
    ("reports/runs/ste_nvan/seed0.json", "ste_nvan"),
])
def test_a_missing_record_names_only_a_stage_that_exists(tmp_path, where, stage):
    with pytest.raises(UserError, match="does not exist") as found:
        read_record(tmp_path / where)
    named = {word.removeprefix("train@").rstrip("`") for word in str(found.value).split() if "train@" in word}
    assert named == ({stage} if stage else {"<preset>"}), found.value
    assert f"--out {tmp_path / where}" not in str(found.value)


@pytest.mark.parametrize("where", ["run.json", "reports/runs/nvan/seed0.json"])
def test_a_broken_record_is_never_to_be_written_over(tmp_path, where):
    path = tmp_path / where
    path.parent.mkdir(parents=True, exist_ok=True)
    for text in ("{not json", json.dumps({"schema": "old"}), json.dumps(edited(["run", "finished_at"], "yesterday"))):
        path.write_text(text)
        with pytest.raises(UserError) as found:
            read_record(path)
        message = str(found.value)
        assert str(path) in message and "correct it" in message
        # Nothing it suggests writes the file given: no --out of it, no stage whose output it is.
        assert f"--out {path}" not in message and "dvc repro" not in message.replace("dvc repro train@<preset>", ""), \
            message


def test_a_record_says_which_evaluation_it_reports_and_how_each_epoch_went(tmp_path):
    # What the worker reports per 0-based epoch: rank1 and map (primary protocol) only where it evaluated.
    numbers = {0: {"epoch": 0, "loss": 2.5, "lr": 1e-3, "clips_per_s": 9.0},
               1: {"epoch": 1, "loss": 2.0, "lr": 5e-4, "rank1": 0.5, "map": 0.25, "mars-official.map": 0.25},
               2: {"epoch": 2, "loss": float("nan"), "lr": 2.5e-4, "rank1": 0.75, "map": 0.5}}
    config = Config.model_validate({"eval": {"select": "test"}}).model_dump(mode="json")
    record = run_record(label="nvan", kind="train", config=config, spec=preset_spec("nvan", 5, width=4), manifest={},
                        cost={}, scores={}, cmc={}, best_epoch=2, epochs=3, git_commit="abc", run={},
                        history=history_of(numbers))
    write_record(tmp_path / "run.json", record)
    found = read_record(tmp_path / "run.json")
    assert found.selection == "test" and found.config.eval.select == "test"
    assert found.written()["history"] == [{"epoch": 1, "loss": 2.5, "lr": 1e-3},
                                          {"epoch": 2, "loss": 2.0, "lr": 5e-4, "rank1": 0.5, "map": 0.25},
                                          {"epoch": 3, "loss": None, "lr": 2.5e-4, "rank1": 0.75, "map": 0.5}]
    assert [(e.epoch, e.rank1) for e in found.history] == [(1, None), (2, 0.5), (3, 0.75)]


def test_a_record_reads_by_fields_and_keeps_what_was_written(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(GOOD, indent=1))
    found = read_record(path)
    assert found.written() == GOOD and found.run.torch == GOOD["run"]["torch"]  # a key the schema does not type
    assert found.primary == "mars-official" and found.primary_scores.rank1 == GOOD["scores"]["mars-official"]["rank1"]
    found.written()["status"] = "failed"
    assert found.written() == GOOD  # a copy each time
    # Written before status, selection and history existed: finished, chosen on the test set; no primary scores.
    legacy = {k: v for k, v in GOOD.items() if k not in ("status", "selection", "history")} | {"scores": {}}
    path.write_text(json.dumps(legacy))
    old = read_record(path)
    assert (old.status, old.selection, old.history) == ("finished", None, None)
    assert old.primary_scores.model_dump(exclude_none=True) == {}


@pytest.mark.parametrize("entry, field, expected", [
    ({"epoch": 1, "loss": 1.0, "lr": "0.001"}, "history.0.lr", "a valid number"),
    ({"epoch": 1, "loss": 1.0, "lr": 0.001, "map": 1.5}, "history.0.map", "less than or equal to 1"),
    ({"epoch": 1, "lr": 0.001}, "history.0.loss", "a value (the field is required)"),
    ({"epoch": 0, "loss": 1.0, "lr": 0.001}, "history.0.epoch", "greater than or equal to 1"),
])
def test_a_malformed_history_entry_is_named(tmp_path, entry, field, expected):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(GOOD | {"history": [entry]}))
    with pytest.raises(UserError) as found:
        read_record(path)
    assert f"{field} = " in str(found.value) and f"expected {expected}" in str(found.value), found.value
