"""datasets.sources: a raw dataset not where its params key says is one message naming the key, the path, what
belongs there and the fix (the DVC-level test is tests/pipeline/test_examples.py)."""

from __future__ import annotations

import json

import pytest

from datasets import mars
from datasets.errors import DatasetError
from datasets.sources import check_source, main

KEY = "data.sources.mars.root"


def mars_root(root, leave_out=()):
    """The folders and info/ files of a MARS root (empty: only their presence is checked), but `leave_out`."""
    for name in mars.LAYOUT:
        if not any(name == gone or name.startswith(f"{gone}/") for gone in leave_out):
            if "." in name:
                (root / name).touch()
            else:
                (root / name).mkdir(parents=True)
    return root


def test_a_complete_root_passes_and_is_recorded(tmp_path):
    root = mars_root(tmp_path / "MARS")
    assert main(["--format", "mars", "--root", str(root), "--param", KEY, "--out", str(tmp_path / "s/mars.json")]) == 0
    assert json.loads((tmp_path / "s/mars.json").read_text()) == {"format": "mars", "root": str(root)}


def test_what_a_root_lacks_is_named_a_missing_folder_for_its_files(tmp_path):
    root = mars_root(tmp_path / "MARS", leave_out=("bbox_test", "info"))
    with pytest.raises(DatasetError) as error:
        check_source("mars", root, KEY)
    message = str(error.value)
    # info/ missing is one problem, not six.
    assert f"{KEY} in params.yaml is {root}, and it lacks bbox_test/, info/." in message
    assert "restore what it lacks" in message and f"or set {KEY} to the folder" in message


@pytest.mark.parametrize("layout, make, problem", [
    ("mars", lambda p: None, "nothing is there"),
    ("duke", lambda p: p.write_text("x"), "that is a file, not a folder"),
    ("duke", lambda p: [(p / s).mkdir(parents=True) for s in ("train", "gallery")], "it lacks query/"),
])
def test_a_root_that_is_not_the_dataset_names_key_path_layout_and_fix(tmp_path, layout, make, problem):
    root = tmp_path / "data"
    make(root)
    with pytest.raises(DatasetError, match="then run dvc repro again") as error:
        check_source(layout, root, f"data.sources.{layout}.root")
    message = str(error.value)
    assert f"data.sources.{layout}.root in params.yaml is {root}, and {problem}." in message
    assert ("bbox_train/ and bbox_test/" if layout == "mars" else "train/, query/ and gallery/") in message


def test_a_relative_root_is_shown_with_the_folder_it_means(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError, match=f"is MARS \\(that is {tmp_path}/MARS\\), and nothing is there"):
        check_source("mars", "MARS", KEY)


def test_the_synthesized_root_may_not_exist_yet_but_is_checked_once_it_does(tmp_path):
    written = tmp_path / "data/raw/synthetic/mars"
    check_source("mars", written, KEY, synthetic_root=written)  # synthesize@mars has not run yet
    with pytest.raises(DatasetError, match="nothing is there"):
        check_source("mars", tmp_path / "elsewhere", KEY, synthetic_root=written)
    written.mkdir(parents=True)
    with pytest.raises(DatasetError, match="it lacks bbox_train/"):
        check_source("mars", written, KEY, synthetic_root=written)
