from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.io

from datasets.errors import DatasetError
from datasets.mars import read_mars
from datasets.prepare import prepare


def test_reader_matches_generated(mars_raw):
    root, truth = mars_raw
    table = read_mars(root)
    assert table.equals(truth)
    test = table.filter(pl.col("split") == "test")
    assert test["is_junk"].sum() == 1 and test["is_distractor"].sum() == 1
    queries = scipy.io.loadmat(root / "info" / "query_IDX.mat")["query_IDX"].ravel().astype(int)
    assert np.flatnonzero(test["is_query"].to_numpy()).tolist() == sorted(queries - 1)
    assert table.filter(pl.col("split") == "train")["is_query"].sum() == 0


def _info(root: Path, split: str = "train") -> np.ndarray:
    return scipy.io.loadmat(root / "info" / f"tracks_{split}_info.mat")[f"track_{split}_info"]


def _save_info(root: Path, info: np.ndarray, split: str = "train") -> None:
    scipy.io.savemat(root / "info" / f"tracks_{split}_info.mat", {f"track_{split}_info": info})


def _names(root: Path, split: str = "train") -> list[str]:
    return (root / "info" / f"{split}_name.txt").read_text().split()


def _rename_line(root: Path, line: int, new: str) -> None:
    names = _names(root)
    old = names[line]
    names[line] = new
    (root / "info" / "train_name.txt").write_text("\n".join(names) + "\n")
    (root / "bbox_train" / new[:4]).mkdir(exist_ok=True)
    (root / "bbox_train" / old[:4] / old).rename(root / "bbox_train" / new[:4] / new)


def _missing_dir(root: Path) -> str:
    (root / "bbox_train").rename(root / "elsewhere")
    return "bbox_train is missing"


def _missing_info_file(root: Path) -> str:
    (root / "info" / "query_IDX.mat").unlink()
    return "query_IDX.mat is missing"


def _wrong_variable(root: Path) -> str:
    scipy.io.savemat(root / "info" / "tracks_train_info.mat", {"tracks": _info(root)})
    return "tracks_train_info.mat has no variable 'track_train_info'"


def _wrong_columns(root: Path) -> str:
    _save_info(root, _info(root)[:, :3])
    return "N x 4"


def _not_a_mat_file(root: Path) -> str:
    (root / "info" / "tracks_test_info.mat").write_bytes(b"not matlab at all")
    return "tracks_test_info.mat cannot be read"


def _row_outside_names(root: Path) -> str:
    info = _info(root)
    info[-1, 1] = len(_names(root)) + 5
    _save_info(root, info)
    return f"row {len(info)} is"


def _images_disagree(root: Path) -> str:
    start, end = _info(root)[0, :2].astype(int)
    name = _names(root)[end - 1]
    camera = int(name[5]) % 9 + 1
    _rename_line(root, end - 1, f"{name[:5]}{camera}{name[6:]}")
    return "images of tracklet row 1 (lines"


def _row_disagrees(root: Path) -> str:
    info = _info(root)
    info[1, 2] += 1
    _save_info(root, info)
    return "tracklet row 2 says pid"


def _bad_name(root: Path) -> str:
    names = _names(root)
    names[0] = "person1.jpg"
    (root / "info" / "train_name.txt").write_text("\n".join(names) + "\n")
    return "line 1 is 'person1.jpg'"


def _missing_image(root: Path) -> str:
    name = _names(root, "test")[3]
    (root / "bbox_test" / name[:4] / name).unlink()
    return str(root / "bbox_test" / name[:4] / name)


def _query_out_of_range(root: Path) -> str:
    scipy.io.savemat(root / "info" / "query_IDX.mat", {"query_IDX": np.array([[1, 10_000]])})
    return "query_IDX must hold 1-based row numbers"


def _empty_train(root: Path) -> str:
    _save_info(root, np.zeros((0, 4)))
    return "the train split is empty"


BREAKERS = [_missing_dir, _missing_info_file, _wrong_variable, _wrong_columns, _not_a_mat_file, _row_outside_names,
            _images_disagree, _row_disagrees, _bad_name, _missing_image, _query_out_of_range, _empty_train]


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__.strip("_"))
def test_bad_input_is_named_and_leaves_no_output(breaker: Callable[[Path], str], mars_copy: Path, tmp_path: Path):
    expected = breaker(mars_copy)
    with pytest.raises(DatasetError, match="MARS|mars") as err:
        read_mars(mars_copy)
    assert expected in str(err.value) and "\n" not in str(err.value)
    out = tmp_path / "prepared" / "mars"
    out.parent.mkdir()
    with pytest.raises(DatasetError):
        prepare("mars", mars_copy, out, height=64, width=32)
    assert not out.exists() and list((tmp_path / "prepared").iterdir()) == []
