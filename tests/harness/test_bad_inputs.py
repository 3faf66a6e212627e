"""Bad input on every CLI: one paragraph naming the path or value, exit code 2, no traceback, nothing half-written.

The entry points run in this process (as `python -m` runs them: through harness.cli.run or
datasets.errors.run_cli); tests elsewhere check the same path in real subprocesses.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness.results.tracking import connect

ROOT = Path(__file__).resolve().parents[2]


def refused(done, *words: str) -> bool:
    err = done.stderr.strip()
    return (done.returncode == 2 and "Traceback" not in err and err.startswith("error: ") and "\n" not in err
            and all(w in err for w in words))


@pytest.fixture
def blocked(tmp_path) -> Path:
    """A path whose parent is a file: no process, root included, can write under it."""
    (tmp_path / "file").write_text("x")
    return tmp_path / "file" / "out"


def test_params_file_not_utf8_or_a_folder(cli, tmp_path):
    (tmp_path / "latin1.yaml").write_bytes("model: {preset: nvan}  # caf\xe9\n".encode("latin-1"))
    done = cli("harness.cost", "--params", str(tmp_path / "latin1.yaml"), "--no-measure")
    assert refused(done, "latin1.yaml", "not UTF-8")
    done = cli("harness.cost", "--params", str(tmp_path), "--no-measure")
    assert refused(done, str(tmp_path), "is a folder")


def test_binary_cost_file_in_report(cli, tmp_path):
    (tmp_path / "cost.json").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    (tmp_path / "run.json").write_text("{}")
    done = cli("harness.report", "--runs", str(tmp_path / "run.json"), "--cost", str(tmp_path / "cost.json"),
               "--out-dir", str(tmp_path / "out"))
    assert refused(done, "cost.json", "not a harness.cost report")
    assert not (tmp_path / "out").exists()


def test_run_and_sweep_names_stay_inside_ray_results(cli, tiny_sets):
    done = cli("harness.train", *tiny_sets, "--name", "../escape")
    assert refused(done, "'../escape'", "no '/' or '..'")
    done = cli("harness.sweep", *tiny_sets, "--name", "../escape")
    assert refused(done, "sweep.name")


def test_unwritable_outputs_fail_before_the_work(cli, blocked, tmp_path, prepared_root, tiny_sets):
    done = cli("harness.cost", "--no-measure", "--preset", "nvan", "--set", "cost.width=4", "--out", str(blocked))
    assert refused(done, str(blocked), "not a writable folder")
    done = cli("harness.report", "--runs", str(tmp_path / "run.json"), "--out-dir", str(blocked))
    assert refused(done, str(blocked), "not a writable folder")
    done = cli("datasets.synthetic", "--format", "mars", "--out", str(blocked), "--identities", "4")
    assert refused(done, str(blocked), "not a writable folder")
    done = cli("datasets.prepare", "--format", "mars", "--root", str(tmp_path), "--out", str(blocked))
    assert done.returncode == 2 and "Traceback" not in done.stderr  # the missing MARS layout is named first
    done = cli("harness.evaluate", "--checkpoint", str(tmp_path / "x"), *tiny_sets, "--save-features", str(blocked))
    assert refused(done, str(blocked), "not a writable folder")
    done = cli("harness.train", *tiny_sets, "--out", str(blocked / "run.json"))
    assert refused(done, "not a writable folder")


def test_non_utf8_mars_name_list(cli, tmp_path):
    from datasets.synthetic import write_mars

    root = tmp_path / "mars"
    write_mars(root, identities=4, cameras=2, tracklets_per_id=2, min_frames=2, max_frames=3, height=32, width=16,
               distractors=0, junk=0, seed=0)
    names = root / "info" / "train_name.txt"
    names.write_bytes(names.read_bytes() + b"\xff\xfe bad\n")
    done = cli("datasets.prepare", "--format", "mars", "--root", str(root), "--out", str(tmp_path / "out"))
    assert refused(done, "train_name.txt", "not UTF-8")


def test_stale_temporary_folders_of_dead_processes_are_removed(tmp_path):
    from datasets.atomic import atomic_directory

    out = tmp_path / "prepared" / "mars"
    out.parent.mkdir(parents=True)
    dead = out.parent / ".mars.tmp-999999999"  # no such process
    dead.mkdir()
    (dead / "frames.uint8").write_bytes(b"\0" * 1024)
    with atomic_directory(out) as tmp:
        (tmp / "manifest.json").write_text(json.dumps({}))
    assert not dead.exists() and (out / "manifest.json").exists()
    assert [p.name for p in out.parent.iterdir()] == ["mars"]


def test_an_alias_bomb_is_refused_at_once_in_one_short_line(cli, tmp_path):
    # A "billion laughs": 9 levels of 9 aliases would expand to 9^9 values in validation and in the message.
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\nmodel: {preset: *a8}\n")
    done = cli("harness.cost", "--params", str(tmp_path / "bomb.yaml"), "--no-measure")
    assert refused(done, "bomb.yaml", "expands to", "YAML aliases") and len(done.stderr) < 1000
    done = cli("harness.cost", "--set", "model.non_local=" + "[" * 3 + "1" + "]" * 3, "--no-measure")
    assert refused(done, "model.non_local") and len(done.stderr) < 1000
    # A value that only has to be echoed is bounded too.
    done = cli("harness.cost", "--set", f"model.preset={'x' * 5000}", "--no-measure")
    assert refused(done, "model.preset", "...") and len(done.stderr) < 1000


def test_a_run_record_with_a_field_of_the_wrong_type(cli, tmp_path):
    good = json.loads((ROOT / "reports" / "runs" / "nvan" / "seed0.json").read_text())
    for field, value, named in (("cost", None, "cost"), ("scores", {"mars-official": {"rank1": "high"}}, "rank1"),
                                ("config", {"eval": {"protocols": []}}, "config.eval.protocols")):
        record = good | {field: value}
        (tmp_path / "run.json").write_text(json.dumps(record))
        done = cli("harness.report", "--runs", str(tmp_path / "run.json"), "--out-dir", str(tmp_path / "out"))
        assert refused(done, "run.json", "wrong type", named), done.stderr


@pytest.mark.parametrize("state, named", [
    ("{not json", "nvan-sweep.json"),
    ("[1, 2]", "nvan-sweep.json"),
    ('{"config": {"seed": "zero"}, "parent_run_id": "' + "a" * 32 + '"}', "config.seed"),
    ('{"config": {"train": 7}, "parent_run_id": "' + "a" * 32 + '"}', "config.train"),
    ('{"config": {}}', "parent_run_id"),
    ("a valid state of a parent run the store does not hold", "names MLflow run " + "b" * 32),
])
def test_a_tampered_sweep_state_is_refused_before_anything_runs(cli, tiny_sets, tiny_config, tmp_path, state, named):
    if state.startswith("a valid state"):
        config = tiny_config()
        connect(config.mlflow.tracking_uri, config.mlflow.experiment)  # the store exists; it lacks that run
        state = json.dumps({"config": config.model_dump(mode="json"), "parent_run_id": "b" * 32})
    folder = tmp_path / "ray" / "s"
    folder.mkdir(parents=True)
    (folder / "nvan-sweep.json").write_text(state)
    done = cli("harness.sweep", *tiny_sets, "--name", "s", "--resume")
    assert refused(done, named), done.stderr


def test_a_cost_file_hint_never_writes_over_the_file_given(cli, tmp_path):
    (tmp_path / "run.json").write_text("{}")
    readme = (ROOT / "README.md").read_bytes()
    report = ("harness.report", "--runs", str(tmp_path / "run.json"), "--out-dir", str(tmp_path / "out"))
    done = cli(*report, "--cost", "README.md")
    assert refused(done, "cost file README.md is not a harness.cost report", "written by `python -m harness.cost",
                   "reports/cost/<preset>.json for a preset of baseline, nvan, ste_nvan"), done.stderr
    assert "--out README.md" not in done.stderr and "--preset" not in done.stderr
    assert (ROOT / "README.md").read_bytes() == readme
    # Missing, and named for a preset: writing it loses nothing, so the hint gives the command.
    done = cli(*report, "--cost", str(tmp_path / "nvan.json"))
    assert refused(done, "does not exist", f"`python -m harness.cost --preset nvan --out {tmp_path / 'nvan.json'}`")
    # Missing, and named for no preset: only what the file should be.
    done = cli(*report, "--cost", str(tmp_path / "costs.json"))
    assert refused(done, "does not exist", "reports/cost/<preset>.json") and "--preset" not in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("override", "named"), [
    ("seed=-1", "seed: -1"), ("seeds=[0,-1]", "seeds.1: -1"), ("seed=4294967296", "seed: 4294967296"),
    ("synthetic.mars.seed=-2", "synthetic.mars.seed: -2"),
])
def test_a_seed_numpy_would_refuse_is_a_config_error_naming_its_key(cli, override, named):
    done = cli("harness.cost", "--set", override, "--no-measure")
    assert refused(done, named, "a seed is an integer from 0 to 2**32 - 1"), done.stderr


def test_a_sweep_whose_seeds_run_past_numpys_range_is_refused(cli):
    done = cli("harness.sweep", "--set", "seed=4294967295", "--set", "sweep.seeds=2")
    assert refused(done, "seed = 4294967295 with sweep.seeds = 2", "lower seed"), done.stderr


def test_a_negative_synthetic_seed_is_refused_by_the_parser(cli, tmp_path):
    done = cli("datasets.synthetic", "--format", "mars", "--out", str(tmp_path / "mars"), "--seed", "-1")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "argument --seed: '-1': a seed is an integer >= 0" in done.stderr
    assert not (tmp_path / "mars").exists()


def test_rehearse_alone_rehearses_the_first_gpu_hour_on_the_cpu(cli, monkeypatch, tmp_path):
    # --rehearse implies --all: it needs no GPU. A budget of no time lists every step as skipped, running none.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    done = cli("harness.gpu_check", "--rehearse", "--budget", "1e-9", "--out", str(tmp_path))
    assert done.returncode == 1 and "Traceback" not in done.stderr and "no CUDA device" not in done.stderr
    summary = (tmp_path / "summary.md").read_text()
    assert summary.startswith("# The first GPU hour: CPU rehearsal\n")
    assert "| train NVAN 2 epochs | skipped: out of time | 0 | - |" in summary


def test_resuming_a_run_that_does_not_exist_is_refused_before_ray_starts(cli, tiny_sets, monkeypatch):
    import ray

    def no_ray(*args, **kwargs):
        raise AssertionError("a local Ray was started for a run that does not exist")

    monkeypatch.setattr(ray, "init", no_ray)
    done = cli("harness.train", *tiny_sets, "--resume", "no-such-run")
    assert refused(done, "--resume no-such-run", "no run of that name", "ray.storage_path")
    done = cli("harness.train", *tiny_sets, "--resume", "no-such-set", "--all-seeds", "--set", "seeds=[0, 1]")
    last = done.stderr.strip().splitlines()[-1]  # after MLflow's own lines as it opens the store to look for the set
    assert done.returncode == 2 and "Traceback" not in done.stderr and last.startswith("error: --resume no-such-set")
    assert "no seed set" in last and "no-such-set-seed0, no-such-set-seed1" in last
