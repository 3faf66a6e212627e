"""Reader of the official MARS layout: bbox_{train,test}/<pid>/<name>.jpg plus the info/ index files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl
import scipy.io

from datasets.errors import DatasetError
from datasets.tracklets import require_splits, tracklet_table

# <pid: 4 digits, or 00-1 for junk>C<camera>T<tracklet>F<frame>.jpg, e.g. 0001C1T0001F001.jpg
NAME = r"^(\d{4}|00-1)C(\d)T(\d{4})F(\d{3,})\.jpg$"
INFO_FILES = ("train_name.txt", "test_name.txt", "tracks_train_info.mat", "tracks_test_info.mat", "query_IDX.mat")
# What a MARS root holds, relative to it: the image folders, and MARS-evaluation's index files in info/.
LAYOUT = ("bbox_train", "bbox_test", "info", *(f"info/{name}" for name in INFO_FILES))
FIX = ("restore it from the official MARS archives (bbox_train.zip, bbox_test.zip and the info/ folder of "
       "MARS-evaluation)")


def read_mars(root: Path) -> pl.DataFrame:
    """The tracklet table of a MARS root, validated against its images; raise DatasetError on bad input."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"MARS root {root} does not exist or is not a folder; pass the dataset's root as --root.")
    for path in (root / name for name in LAYOUT):
        if not path.exists():
            raise DatasetError(f"MARS root {root}: {path} is missing; {FIX}, or pass the right --root.")
    train = _read_split(root, "train")
    test = _read_split(root, "test")
    query_path = root / "info" / "query_IDX.mat"
    query = _load_mat(query_path, "query_IDX").ravel()
    if query.size == 0 or query.min() < 1 or query.max() > test.height:
        raise DatasetError(
            f"{query_path}: query_IDX must hold 1-based row numbers into the {test.height} rows of "
            f"tracks_test_info.mat, got values in [{query.min(initial=0)}, {query.max(initial=0)}]; "
            f"use the query_IDX.mat that belongs to this tracks_test_info.mat."
        )
    is_query = np.zeros(test.height, dtype=bool)
    is_query[query - 1] = True
    table = pl.concat([train, test.with_columns(is_query=pl.Series(is_query))])
    require_splits(table, f"MARS root {root}", f"{FIX}.")
    return table


def _read_split(root: Path, split: str) -> pl.DataFrame:
    """The tracklets of one split (train | test), every row of its info file checked against its name list and its
    images."""
    names_path = root / "info" / f"{split}_name.txt"
    info_path = root / "info" / f"tracks_{split}_info.mat"
    names = _read_names(names_path)
    start, end, pid, camera = _read_info(info_path, split, names_path, len(names))
    line = _check_labels(names, names_path, info_path, start, end, pid, camera)
    _check_images(root / f"bbox_{split}", names, names_path, line)
    paths = [f"bbox_{split}/{n[:4]}/{n}" for n in names]
    return tracklet_table(
        split=[split] * len(start), pid=pid.tolist(), camera=camera.tolist(),
        tracklet=[names[s - 1][:11] for s in start], is_query=[False] * len(start),
        frames=[paths[s - 1:e] for s, e in zip(start, end)],
    )


def _read_names(names_path: Path) -> list[str]:
    try:
        text = names_path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{names_path} is not UTF-8 text (byte {e.start}: {e.reason}); MARS name lists hold one "
                           f"ASCII image name per line: restore {names_path.name} from the MARS info/ folder.") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _read_info(info_path: Path, split: str, names_path: Path, lines: int) -> np.ndarray:
    """The info file's rows [start, end, pid, camera] (1-based, inclusive lines of the name list), transposed."""
    info = _load_mat(info_path, f"track_{split}_info")
    if info.ndim != 2 or info.shape[1] != 4:
        raise DatasetError(
            f"{info_path}: track_{split}_info must be an N x 4 array of rows [start, end, pid, camera], "
            f"got shape {info.shape}; use the tracks_{split}_info.mat from the MARS info/ folder."
        )
    start, end, pid, camera = info.T
    bad = np.flatnonzero((start < 1) | (end > lines) | (start > end))
    if bad.size:
        r = bad[0]
        raise DatasetError(
            f"{info_path}: row {r + 1} is [{start[r]}, {end[r]}, {pid[r]}, {camera[r]}], but start/end must be "
            f"1-based line numbers with start <= end <= {lines} (the lines of {names_path}); "
            f"the info file and the name list do not belong together, {FIX}."
        )
    return info.T


def _check_labels(names: list[str], names_path: Path, info_path: Path, start: np.ndarray, end: np.ndarray,
                  pid: np.ndarray, camera: np.ndarray) -> np.ndarray:
    """Every image name parses, and a tracklet's images agree with each other and with its row on pid and camera;
    returns the name-list line of every tracklet image (0-based), tracklet by tracklet."""
    parsed = pl.DataFrame({"name": names}).select(
        pl.col("name").str.extract(NAME, 1).alias("pid"), pl.col("name").str.extract(NAME, 2).alias("camera")
    )
    unparsed = np.flatnonzero(parsed["pid"].is_null().to_numpy())
    if unparsed.size:
        i = unparsed[0]
        raise DatasetError(
            f"{names_path}: line {i + 1} is {names[i]!r}, not a MARS image name like 0001C1T0001F001.jpg; "
            f"fix the line or {FIX}."
        )
    name_pid = parsed["pid"].replace("00-1", "-1").cast(pl.Int64).to_numpy()
    name_camera = parsed["camera"].cast(pl.Int64).to_numpy()
    lengths = end - start + 1
    row_of = np.repeat(np.arange(len(start)), lengths)
    line = np.repeat(start - 1 - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    first = start - 1
    for what, got, want in (("pid", name_pid, pid), ("camera", name_camera, camera)):
        inner = np.flatnonzero(got[line] != got[first[row_of]])
        if inner.size:
            k, r = line[inner[0]], row_of[inner[0]]
            raise DatasetError(
                f"{info_path}: the images of tracklet row {r + 1} (lines {start[r]}-{end[r]} of {names_path}) "
                f"disagree on the {what}: {names[k]} has {what} {got[k]} but {names[first[r]]} has {got[first[r]]}; "
                f"the name list or the info file is corrupt, {FIX}."
            )
        outer = np.flatnonzero(got[first] != want)
        if outer.size:
            r = outer[0]
            raise DatasetError(
                f"{info_path}: tracklet row {r + 1} says {what} {want[r]} but its images (lines {start[r]}-{end[r]} "
                f"of {names_path}, e.g. {names[first[r]]}) have {what} {got[first[r]]}; "
                f"the name list or the info file is corrupt, {FIX}."
            )
    return line


def _check_images(folder: Path, names: list[str], names_path: Path, line: np.ndarray) -> None:
    present = {name for sub in {n[:4] for n in names} if (folder / sub).is_dir() for name in os.listdir(folder / sub)}
    for k in line:
        if names[k] not in present:
            raise DatasetError(
                f"MARS image {folder / names[k][:4] / names[k]} (line {k + 1} of {names_path}) does not exist; "
                f"{FIX}, or remove its tracklet from the info files."
            )


def _load_mat(path: Path, variable: str) -> np.ndarray:
    try:
        mat = scipy.io.loadmat(path)
    except (ValueError, NotImplementedError, OSError, scipy.io.matlab.MatReadError) as e:
        raise DatasetError(
            f"{path} cannot be read as a MATLAB v5 .mat file ({e}); {FIX} (re-save v7.3 files with -v7)."
        ) from None
    if variable not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DatasetError(
            f"{path} has no variable {variable!r} (it holds {found}); use the file of that name from the "
            f"MARS info/ folder, {FIX}."
        )
    values = np.asarray(mat[variable])
    if values.size and not np.array_equal(values, np.round(values)):
        raise DatasetError(f"{path}: {variable} must hold integers, got non-integer values; {FIX}.")
    return values.astype(np.int64)
