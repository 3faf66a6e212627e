from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from datasets.duke import read_duke
from datasets.errors import DatasetError
from datasets.prepare import prepare
from datasets.synthetic import write_duke


@pytest.mark.parametrize("underscore", [False, True], ids=["0001C6F0099X30823", "0001_C6_F0099_X30823"])
def test_reader_matches_generated_in_both_name_conventions(underscore: bool, tmp_path: Path):
    truth = write_duke(tmp_path / "duke", identities=4, cameras=3, tracklets_per_id=2, min_frames=2, max_frames=4,
                       height=32, width=16, underscore_names=underscore)
    table = read_duke(tmp_path / "duke")
    assert table.equals(truth)
    assert ("_C" in table["frames"][0][0]) == underscore


def test_queries_are_gallery_rows_not_counted_twice(duke_raw):
    root, truth = duke_raw
    table = read_duke(root)
    test = table.filter(pl.col("split") == "test")
    gallery = {p.parent.relative_to(root / "gallery").as_posix() for p in (root / "gallery").rglob("*.jpg")}
    query = {p.parent.relative_to(root / "query").as_posix() for p in (root / "query").rglob("*.jpg")}
    assert set(test["tracklet"]) == gallery and test.height == len(gallery)
    assert set(test.filter("is_query")["tracklet"]) == query


def _first(root: Path, split: str) -> Path:
    return sorted((root / split).rglob("*.jpg"))[0]


def _missing_folder(root: Path) -> str:
    shutil.rmtree(root / "query")
    return "query is missing"


def _bad_frame_name(root: Path) -> str:
    frame = _first(root, "train")
    frame.rename(frame.with_name("frame_0001.jpg"))
    return "frame_0001.jpg is named in neither convention"


def _pid_disagrees_with_folder(root: Path) -> str:
    frame = _first(root, "gallery")
    frame.rename(frame.with_name("9999" + frame.name[4:]))
    return "has pid 9999 but lies in pid folder"


def _mixed_cameras(root: Path) -> str:
    frame = _first(root, "train")
    frame.rename(frame.with_name(frame.name[:5] + "9" + frame.name[6:]))
    return f"{frame.parent} mixes cameras"


def _query_not_in_gallery(root: Path) -> str:
    track = _first(root, "query").parent
    shutil.rmtree(root / "gallery" / track.relative_to(root / "query"))
    return f"query tracklet {track} has no copy"


def _empty_train(root: Path) -> str:
    for pid in (root / "train").iterdir():
        shutil.rmtree(pid)
    return "the train split is empty"


def _empty_tracklet_folder(root: Path) -> str:
    (root / "gallery" / "0001" / "0001").mkdir(parents=True)
    return "0001/0001 holds no .jpg frames"


BREAKERS = [_missing_folder, _bad_frame_name, _pid_disagrees_with_folder, _mixed_cameras, _query_not_in_gallery,
            _empty_train, _empty_tracklet_folder]


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__.strip("_"))
def test_bad_input_is_named_and_leaves_no_output(breaker: Callable[[Path], str], duke_copy: Path, tmp_path: Path):
    expected = breaker(duke_copy)
    with pytest.raises(DatasetError, match="DukeV") as err:
        read_duke(duke_copy)
    assert expected in str(err.value) and "\n" not in str(err.value)
    out = tmp_path / "prepared" / "duke"
    out.parent.mkdir()
    with pytest.raises(DatasetError):
        prepare("duke", duke_copy, out, height=64, width=32)
    assert list(out.parent.iterdir()) == []
