"""Reader of the official DukeMTMC-VideoReID layout: {train,query,gallery}/<pid>/<tracklet>/<frame>.jpg."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

from datasets.errors import DatasetError
from datasets.tracklets import require_splits, tracklet_table

# pid, camera, frame index in the tracklet, frame index in the camera's video.
FRAME_NAMES = (
    re.compile(r"^(\d+)C(\d+)F(\d+)X(\d+)\.jpg$"),  # 0001C6F0099X30823.jpg
    re.compile(r"^(\d+)_C(\d+)_F(\d+)_X(\d+)\.jpg$"),  # 0001_C6_F0099_X30823.jpg
)
FIX = "restore it from the official DukeMTMC-VideoReID archive"
# What a DukeV root holds: one folder per split, of <pid>/<tracklet>/<frame>.jpg.
LAYOUT = ("train", "query", "gallery")


def read_duke(root: Path) -> pl.DataFrame:
    """The tracklet table of a DukeV root (test = gallery, queries flagged); raise DatasetError on bad input."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"DukeV root {root} does not exist or is not a folder; pass the dataset's root as --root.")
    for sub in LAYOUT:
        if not (root / sub).is_dir():
            raise DatasetError(f"DukeV root {root}: folder {root / sub} is missing; {FIX}, or pass the right --root.")
    train = _read_folder(root, "train")
    query = _read_folder(root, "query")
    gallery = _read_folder(root, "gallery")
    in_gallery = {(pid, key) for pid, _, key, _ in gallery}
    for pid, _, key, _ in query:
        if (pid, key) not in in_gallery:
            raise DatasetError(
                f"DukeV query tracklet {root / 'query' / key} has no copy at {root / 'gallery' / key}; every query "
                f"tracklet must also be in the gallery (same pid and tracklet folder), {FIX}."
            )
    queries = {(pid, key) for pid, _, key, _ in query}
    rows = [("train", *t, False) for t in train] + [("test", *t, (t[0], t[2]) in queries) for t in gallery]
    split, pid, camera, tracklet, frames, is_query = (list(c) for c in zip(*rows)) if rows else ([],) * 6
    table = tracklet_table(split=split, pid=pid, camera=camera, tracklet=tracklet, is_query=is_query, frames=frames)
    require_splits(table, f"DukeV root {root}", f"every split folder needs <pid>/<tracklet>/*.jpg tracklets, {FIX}.")
    return table


def _read_folder(root: Path, split: str) -> list[tuple[int, int, str, list[str]]]:
    """(pid, camera, tracklet key 'pid/tracklet', frame paths relative to root) per tracklet, sorted."""
    tracklets = []
    for pid_dir in sorted(p for p in (root / split).iterdir() if p.is_dir()):
        for track_dir in sorted(p for p in pid_dir.iterdir() if p.is_dir()):
            frames = sorted(_parse(f, pid_dir.name) for f in track_dir.iterdir() if f.suffix == ".jpg")
            if not frames:
                raise DatasetError(
                    f"DukeV tracklet folder {track_dir} holds no .jpg frames; {FIX} or delete the folder."
                )
            cameras = {camera for _, camera, _ in frames}
            if len(cameras) > 1:
                raise DatasetError(
                    f"DukeV tracklet folder {track_dir} mixes cameras {sorted(cameras)}; a tracklet comes from one "
                    f"camera, {FIX}."
                )
            key = f"{pid_dir.name}/{track_dir.name}"
            paths = [f"{split}/{key}/{name}" for _, _, name in frames]
            tracklets.append((int(pid_dir.name), cameras.pop(), key, paths))
    return tracklets


def _parse(path: Path, pid_folder: str) -> tuple[int, int, str]:
    """(frame index, camera, file name) of a frame file, checked against its pid folder."""
    match = next((m for m in (p.match(path.name) for p in FRAME_NAMES) if m), None)
    if match is None:
        raise DatasetError(
            f"DukeV frame {path} is named in neither convention (0001C6F0099X30823.jpg or 0001_C6_F0099_X30823.jpg: "
            f"pid, camera, frame in tracklet, frame in video); rename it or {FIX}."
        )
    pid, camera, frame, _ = match.groups()
    if not pid_folder.isdigit() or int(pid) != int(pid_folder):
        raise DatasetError(
            f"DukeV frame {path} has pid {pid} but lies in pid folder {pid_folder!r}; move it to the folder of its "
            f"pid or {FIX}."
        )
    return int(frame), int(camera), path.name
