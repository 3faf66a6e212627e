"""The JPEG frame store against the raw one: the same clips from far fewer bytes."""

from __future__ import annotations

import io
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from datasets.errors import DatasetError
from datasets.loaders import EvalClips, TrainClips
from datasets.prepare import prepare
from datasets.store import FrameStore

SIZE = dict(height=64, width=32)  # the synthetic frames' own size (conftest.SIZE): source JPEGs are kept as they are
HALF = dict(height=32, width=16)  # a resize: every frame is encoded
# Resized to 32x16 and encoded at quality 95, the synthetic frames measured at most 2.7 levels of mean absolute
# error per frame and 18 at any pixel; swapping R and B gives at least 11 per frame and over 200 at a pixel.
MEAN_ERROR, MAX_ERROR = 4.0, 32


def _frames(directory: Path) -> np.ndarray:
    """Every frame of a prepared store, N x 3 x H x W as int (for differences)."""
    store = FrameStore(directory)
    return store.read(np.arange(len(store))).astype(int)


def _without_store(manifest: dict) -> dict:
    """The manifest but what describes the store's own files (its format, their digests and the hash over them)."""
    return {key: value for key, value in manifest.items() if key not in ("store", "files", "store_hash")}


def _disk_bytes(directory: Path) -> int:
    """Bytes of the frame store's files (not the table or manifest)."""
    return sum(p.stat().st_size for p in directory.glob("frames.*") if p.name != "frames.json")


@pytest.mark.parametrize("layout", ["mars", "duke"])
def test_native_size_jpeg_store_keeps_the_source_bytes_and_reads_like_raw(
    layout: str, request: pytest.FixtureRequest, tmp_path: Path,
):
    root = request.getfixturevalue(f"{layout}_raw")[0]
    raw = request.getfixturevalue(f"{layout}_prepared")
    manifest = prepare(layout, root, tmp_path / "jpeg", **SIZE, store="jpeg")
    jpeg = tmp_path / "jpeg"
    raw_manifest = json.loads((raw / "manifest.json").read_text())
    assert raw_manifest["store"] == {"format": "raw"}
    assert manifest["store"] == {"format": "jpeg", "quality": 95, "encoder": manifest["store"]["encoder"],
                                 "copied_frames": manifest["frames"], "encoded_frames": 0}
    assert _without_store(manifest) == _without_store(raw_manifest)
    assert pl.read_parquet(jpeg / "tracklets.parquet").equals(pl.read_parquet(raw / "tracklets.parquet"))
    paths = pl.read_parquet(jpeg / "tracklets.parquet")["frames"].explode().to_list()
    assert (jpeg / "frames.jpeg").read_bytes() == b"".join((root / p).read_bytes() for p in paths)  # byte for byte
    # simplejpeg's decode (accurate DCT, fancy upsampling) is PIL's to the bit, on these 4:2:0 files.
    assert np.array_equal(_frames(jpeg), _frames(raw))
    store = FrameStore(jpeg)
    grid = np.arange(12).reshape(3, 4)  # EvalClips' dense clips index with 2-D arrays
    assert np.array_equal(store.read(grid), FrameStore(raw).read(grid))
    assert len(pickle.dumps(store)) < 1000  # read from, so its files are open: the pickle must not carry them
    train = TrainClips(raw, 4), TrainClips(jpeg, 4)
    for i in range(len(train[0])):
        a, b = train[0][i, 0, i], train[1][i, 0, i]
        assert a[1:] == b[1:] and np.array_equal(a[0], b[0])
    dense = EvalClips(raw, 4, "dense"), EvalClips(jpeg, 4, "dense")
    for i in range(len(dense[0])):
        a, b = dense[0][i], dense[1][i]
        assert a[1:] == b[1:] and np.array_equal(a[0], b[0])
    assert _disk_bytes(jpeg) * 3 < _disk_bytes(raw)  # measured: 1,449 against 6,144 bytes a frame


def test_resized_jpeg_store_is_within_the_encoding_error_of_raw(mars_raw, tmp_path: Path):
    root = mars_raw[0]
    prepare("mars", root, tmp_path / "raw", **HALF)
    manifest = prepare("mars", root, tmp_path / "jpeg", **HALF, store="jpeg")
    assert manifest["store"]["copied_frames"] == 0 and manifest["store"]["encoded_frames"] == manifest["frames"]
    error = np.abs(_frames(tmp_path / "jpeg") - _frames(tmp_path / "raw"))
    assert error.mean(axis=(1, 2, 3)).max() <= MEAN_ERROR and error.max() <= MAX_ERROR
    coarse = prepare("mars", root, tmp_path / "q50", **HALF, store="jpeg", quality=50)
    assert coarse["store"]["quality"] == 50
    assert _disk_bytes(tmp_path / "q50") < _disk_bytes(tmp_path / "jpeg")


def _save_as(path: Path, **options) -> None:
    """Re-save the JPEG at `path` with PIL `options` (format, mode and save arguments)."""
    image = Image.open(path).convert(options.pop("mode", "RGB"))
    buffer = io.BytesIO()
    image.save(buffer, options.pop("format", "JPEG"), **options)
    path.write_bytes(buffer.getvalue())


def test_jpeg_sources_are_kept_only_where_they_decode_as_pil_does(mars_copy: Path, tmp_path: Path):
    files = sorted((mars_copy / "bbox_train").rglob("*.jpg"))
    kept = {0: dict(subsampling=0), 1: dict(subsampling=1), 2: dict(progressive=True), 3: dict(mode="L")}
    # libjpeg-turbo turns CMYK into RGB differently from PIL (by 1 level); a PNG is no JPEG whatever its name.
    encoded = {4: dict(mode="CMYK"), 5: dict(format="PNG")}
    for i, options in {**kept, **encoded}.items():
        _save_as(files[i], **options)
    prepare("mars", mars_copy, tmp_path / "raw", **SIZE)
    manifest = prepare("mars", mars_copy, tmp_path / "jpeg", **SIZE, store="jpeg")
    assert manifest["store"]["encoded_frames"] == len(encoded)
    assert manifest["store"]["copied_frames"] == manifest["frames"] - len(encoded)
    paths = pl.read_parquet(tmp_path / "jpeg" / "tracklets.parquet")["frames"].explode().to_list()
    changed = [paths.index(str(files[i].relative_to(mars_copy))) for i in encoded]
    error = np.abs(_frames(tmp_path / "jpeg") - _frames(tmp_path / "raw"))
    assert error[changed].mean(axis=(1, 2, 3)).max() <= MEAN_ERROR and error.max() <= MAX_ERROR
    assert np.delete(error, changed, axis=0).max() == 0


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_skip_corrupt_drops_frames_from_the_jpeg_store(mars_raw, mars_copy: Path, tmp_path: Path):
    truth = mars_raw[1]
    whole = truth.filter(pl.col("split") == "train")[0]  # every frame corrupt: the tracklet goes
    part = truth.filter((pl.col("split") == "test") & (pl.col("num_frames") > 2))[0]
    for path in [*whole["frames"][0], part["frames"][0][1]]:
        _truncate(mars_copy / path)
    raw = prepare("mars", mars_copy, tmp_path / "raw", **SIZE, skip_corrupt=True)
    jpeg = prepare("mars", mars_copy, tmp_path / "jpeg", **SIZE, store="jpeg", skip_corrupt=True)
    assert len(jpeg["dropped_frames"]) == whole["num_frames"][0] + 1
    assert _without_store(jpeg) == _without_store(raw)
    assert jpeg["store"]["copied_frames"] == jpeg["frames"]
    offsets = np.load(tmp_path / "jpeg" / "frames.index.npy")
    assert len(offsets) == jpeg["frames"] + 1 and offsets[-1] == (tmp_path / "jpeg" / "frames.jpeg").stat().st_size
    assert np.array_equal(_frames(tmp_path / "jpeg"), _frames(tmp_path / "raw"))


def test_jpeg_store_is_the_same_with_worker_processes(mars_raw, tmp_path: Path):
    serial = prepare("mars", mars_raw[0], tmp_path / "serial", **HALF, store="jpeg")
    parallel = prepare("mars", mars_raw[0], tmp_path / "parallel", **HALF, store="jpeg", workers=2)
    assert serial == parallel
    for name in ("frames.jpeg", "frames.index.npy", "frames.json"):
        assert (tmp_path / "serial" / name).read_bytes() == (tmp_path / "parallel" / name).read_bytes()


def test_bad_store_options_and_formats_are_named(mars_prepared: Path, mars_raw, tmp_path: Path):
    with pytest.raises(DatasetError, match=r"--store 'png' is not a frame store format; use raw .* or jpeg"):
        prepare("mars", mars_raw[0], tmp_path / "out", store="png")
    for quality in (0, 101):
        with pytest.raises(DatasetError, match=f"--jpeg-quality {quality} is outside 1..100"):
            prepare("mars", mars_raw[0], tmp_path / "out", store="jpeg", quality=quality)
    assert list(tmp_path.iterdir()) == []
    # A raw store written before the format was recorded still opens, as raw.
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(mars_prepared / "frames.uint8", old)
    meta = json.loads((mars_prepared / "frames.json").read_text())
    assert meta.pop("format") == "raw"
    (old / "frames.json").write_text(json.dumps(meta))
    assert np.array_equal(_frames(old), _frames(mars_prepared))
    (old / "frames.json").write_text(json.dumps({**meta, "format": "webp"}))
    with pytest.raises(DatasetError, match=r"frames.json names frame store format 'webp'.*prepare the dataset again"):
        FrameStore(old)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "datasets.prepare", *args], capture_output=True, text=True,
                          cwd=Path(__file__).parents[2])


def test_cli_builds_a_jpeg_store_and_rejects_bad_options(mars_raw, tmp_path: Path):
    common = ["--format", "mars", "--root", str(mars_raw[0]), "--out", str(tmp_path / "out"), "--height", "32",
              "--width", "16"]
    bad = _cli(*common, "--store", "jpg")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --store 'jpg' is not a frame store format")
    done = _cli(*common, "--store", "jpeg", "--jpeg-quality", "80")
    assert done.returncode == 0, done.stderr
    store = json.loads((tmp_path / "out" / "manifest.json").read_text())["store"]
    assert store["format"] == "jpeg" and store["quality"] == 80 and FrameStore(tmp_path / "out").format == "jpeg"
