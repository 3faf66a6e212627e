"""Bad input on every CLI: one paragraph naming the path or value, exit code 2, no traceback, nothing half-written.

The entry points run in this process (as `python -m` runs them: through harness.cli.run or
datasets.errors.run_cli); tests elsewhere check the same path in real subprocesses.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
