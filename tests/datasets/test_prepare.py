from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

import datasets.prepare as prepare_module
from datasets.errors import DatasetError
from datasets.prepare import prepare
from datasets.progress import INTERVAL_ENV, Progress, duration
from datasets.store import FrameStore
from datasets.synthetic import SYNTHETIC_MARKER

COLUMNS = {
    "split": pl.String, "pid": pl.Int64, "camera": pl.Int64, "tracklet": pl.String, "num_frames": pl.Int64,
    "frame_offset": pl.Int64, "is_query": pl.Boolean, "is_junk": pl.Boolean, "is_distractor": pl.Boolean,
    "frames": pl.List(pl.String),
}


def _decoded(root: Path, paths: list[str], height: int, width: int) -> np.ndarray:
    images = [Image.open(root / p).convert("RGB") for p in paths]
    images = [im if im.size == (width, height) else im.resize((width, height), Image.Resampling.BILINEAR)
              for im in images]
    return np.stack([np.asarray(im).transpose(2, 0, 1) for im in images])


@pytest.mark.parametrize("layout", ["mars", "duke"])
def test_round_trip_equals_generated(layout: str, request: pytest.FixtureRequest):
    root, truth = request.getfixturevalue(f"{layout}_raw")
    out = request.getfixturevalue(f"{layout}_prepared")
    table = pl.read_parquet(out / "tracklets.parquet")
    assert dict(table.schema) == COLUMNS
    assert table.drop("frame_offset").equals(truth)
    assert table["frame_offset"].to_list() == (table["num_frames"].cum_sum() - table["num_frames"]).to_list()
    store = FrameStore(out)
    assert store.shape == (truth["num_frames"].sum(), 3, 64, 32)
    expected = _decoded(root, truth["frames"].explode().to_list(), 64, 32)
    assert np.array_equal(store.read(np.arange(len(store))), expected)
    manifest = json.loads((out / "manifest.json").read_text())
    for split in ("train", "test"):
        rows = truth.filter(pl.col("split") == split)
        assert manifest["splits"][split]["tracklets"] == rows.height
        assert manifest["splits"][split]["pids"] == rows["pid"].n_unique()
        assert manifest["splits"][split]["frames"] == rows["num_frames"].sum()
        assert manifest["splits"][split]["queries"] == rows["is_query"].sum()
    assert manifest["image_size"] == {"height": 64, "width": 32}
    assert manifest["synthetic"] is True  # the generator marks its datasets; real ones lack the marker


def test_resizes_and_parallel_decoding_gives_identical_output(mars_raw, tmp_path: Path):
    root, truth = mars_raw
    serial = prepare("mars", root, tmp_path / "serial", height=32, width=16)
    parallel = prepare("mars", root, tmp_path / "parallel", height=32, width=16, workers=2)
    assert serial == parallel
    frames = (tmp_path / "serial" / "frames.uint8").read_bytes()
    assert frames == (tmp_path / "parallel" / "frames.uint8").read_bytes()
    first = truth["frames"][0].to_list()
    assert np.array_equal(FrameStore(tmp_path / "serial").read(np.arange(len(first))), _decoded(root, first, 32, 16))


def test_content_hash_follows_the_images(mars_copy: Path, tmp_path: Path):
    before = prepare("mars", mars_copy, tmp_path / "a", height=32, width=16)
    assert prepare("mars", mars_copy, tmp_path / "a", height=32, width=16) == before  # rerun replaces, same result
    image = sorted((mars_copy / "bbox_train").rglob("*.jpg"))[0]
    Image.new("RGB", (32, 64), (9, 9, 9)).save(image)
    after = prepare("mars", mars_copy, tmp_path / "a", height=32, width=16)
    assert after["content_hash"] != before["content_hash"]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_corrupt_image_is_named_and_leaves_no_output(mars_copy: Path, tmp_path: Path):
    image = sorted((mars_copy / "bbox_test").rglob("*.jpg"))[5]
    _truncate(image)
    with pytest.raises(DatasetError, match=f"image {image} cannot be decoded.*--skip-corrupt"):
        prepare("mars", mars_copy, tmp_path / "out", height=64, width=32)
    assert list(tmp_path.iterdir()) == [tmp_path / "mars"]


def test_skip_corrupt_drops_frames_and_empty_tracklets(mars_raw, mars_copy: Path, tmp_path: Path):
    truth = mars_raw[1]
    whole = truth.filter(pl.col("split") == "train")[0]  # every frame corrupt: the tracklet goes
    part = truth.filter((pl.col("split") == "test") & (pl.col("num_frames") > 1))[0]  # one frame corrupt
    for path in whole["frames"][0]:
        _truncate(mars_copy / path)
    bad = part["frames"][0][0]
    _truncate(mars_copy / bad)
    manifest = prepare("mars", mars_copy, tmp_path / "out", height=64, width=32, skip_corrupt=True)
    assert manifest["dropped_frames"] == whole["frames"][0].to_list() + [bad]
    assert manifest["dropped_tracklets"] == whole["tracklet"].to_list()
    table = pl.read_parquet(tmp_path / "out" / "tracklets.parquet")
    assert table.height == truth.height - 1
    row = table.filter(pl.col("tracklet") == part["tracklet"][0])
    assert row["num_frames"][0] == part["num_frames"][0] - 1 and bad not in row["frames"][0]
    assert len(FrameStore(tmp_path / "out")) == table["num_frames"].sum() == manifest["frames"]
    kept = row["frames"][0].to_list()
    offset = row["frame_offset"][0]
    assert np.array_equal(FrameStore(tmp_path / "out").read(offset + np.arange(len(kept))),
                          _decoded(mars_copy, kept, 64, 32))


@pytest.mark.parametrize("store", ["raw", "jpeg"])
def test_interrupted_run_keeps_the_previous_output(mars_raw, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   store: str):
    out = tmp_path / "out"
    prepare("mars", mars_raw[0], out, height=32, width=16)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupt(*args):
        raise KeyboardInterrupt

    writer = prepare_module.RawWriter if store == "raw" else prepare_module.JpegWriter
    monkeypatch.setattr(writer, "encode", interrupt)
    with pytest.raises(KeyboardInterrupt):
        prepare("mars", mars_raw[0], out, height=64, width=32, store=store)
    assert list(tmp_path.iterdir()) == [out]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=Path(__file__).parents[2],
                          env=env)


def test_cli_reports_bad_input_in_one_paragraph_with_exit_code_2(tmp_path: Path):
    result = _cli("datasets.prepare", "--format", "mars", "--root", str(tmp_path / "nowhere"),
                  "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: MARS root {tmp_path / 'nowhere'}") and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_synthesizes_and_prepares(tmp_path: Path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    made = _cli("datasets.synthetic", "--format", "duke", "--out", str(raw), "--identities", "4", "--cameras", "2",
                "--tracklets-per-id", "2", "--min-frames", "2", "--max-frames", "3", "--height", "32", "--width", "16")
    assert made.returncode == 0, made.stderr
    done = _cli("datasets.prepare", "--format", "duke", "--root", str(raw), "--out", str(out),
                "--height", "32", "--width", "16", "--workers", "1")
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "manifest.json").read_text())["splits"]["train"]["pids"] == 2
    bad = _cli("datasets.synthetic", "--format", "mars", "--out", str(raw), "--cameras", "1")
    assert bad.returncode == 2 and bad.stderr.startswith("error: synthetic data needs")


def test_data_without_the_synthetic_marker_is_real(mars_copy: Path, tmp_path: Path):
    (mars_copy / SYNTHETIC_MARKER).unlink()
    assert prepare("mars", mars_copy, tmp_path / "out", height=64, width=32)["synthetic"] is False


def test_cli_logs_progress_without_a_terminal(mars_raw, tmp_path: Path):
    # Pipes, not a TTY: as under DVC or a cluster scheduler, where a tqdm bar shows nothing.
    done = _cli("datasets.prepare", "--format", "mars", "--root", str(mars_raw[0]), "--out", str(tmp_path / "mars"),
                "--height", "64", "--width", "32", env={**os.environ, INTERVAL_ENV: "0"})
    assert done.returncode == 0, done.stderr
    frames = json.loads((tmp_path / "mars" / "manifest.json").read_text())["frames"]
    line = rf"datasets.progress: prepare mars: {frames:,}/{frames:,} frames \(100.0%\)"
    assert re.search(rf"{line}, [\d,]+ frames/s, about 0 s left\n", done.stderr), done.stderr
    assert re.search(rf"{line} in \d+ s, [\d,]+ frames/s\n", done.stderr), done.stderr
    assert done.stdout == ""


class Clock:
    """A settable clock (seconds)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_logs_at_most_every_interval_and_a_last_line(caplog: pytest.LogCaptureFixture):
    clock = Clock()
    caplog.set_level(logging.INFO, logger="datasets.progress")
    with Progress(1_191_003, "prepare mars", "frames", interval_s=5.0, terminal=False, clock=clock) as progress:
        for now, n in [(2.0, 4096), (5.84, 8192), (8.0, 4096), (10.8, 4096), (10.9, 4096)]:
            clock.now = now
            progress.update(n)
        clock.now = 600.0
    assert caplog.messages == [
        "prepare mars: 12,288/1,191,003 frames (1.0%), 2,104 frames/s, about 9 min left",  # 5.84 s after the start
        "prepare mars: 24,576/1,191,003 frames (2.1%), 2,255 frames/s, about 9 min left",  # 5.06 s after that line
        "prepare mars: 24,576/1,191,003 frames (2.1%) in 10 min, 41 frames/s",
    ]


def test_progress_interval_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="datasets.progress")
    monkeypatch.setenv(INTERVAL_ENV, "0")
    clock = Clock()
    with Progress(3, "copy", "files", terminal=False, clock=clock) as progress:
        for _ in range(3):
            progress.update(1)  # no time passes: the first line cannot show a rate
    assert caplog.messages == ["copy: 1/3 files (33.3%)", "copy: 2/3 files (66.7%)", "copy: 3/3 files (100.0%)",
                               "copy: 3/3 files (100.0%) in 0 s"]
    caplog.clear()
    with pytest.raises(KeyError), Progress(3, "copy", "files", terminal=False, clock=clock) as progress:
        progress.update(1)
        raise KeyError("disk gone")
    assert caplog.messages == ["copy: 1/3 files (33.3%)"]  # no last line: the error has the last word
    monkeypatch.delenv(INTERVAL_ENV)
    assert Progress(3, "copy", "files", terminal=False).interval_s == 30.0
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv(INTERVAL_ENV, bad)
        with pytest.raises(DatasetError, match=f"{INTERVAL_ENV}={bad!r} must be a number of seconds >= 0"):
            Progress(3, "copy", "files", terminal=False)


def test_progress_on_a_terminal_draws_a_bar_and_logs_nothing(caplog: pytest.LogCaptureFixture,
                                                            capsys: pytest.CaptureFixture):
    caplog.set_level(logging.INFO, logger="datasets.progress")
    with Progress(4, "copy", "files", interval_s=0.0, terminal=True) as progress:
        progress.update(4)
    assert caplog.messages == []
    assert "copy: 100%" in capsys.readouterr().err


def test_durations_are_rounded_for_reading():
    assert [duration(s) for s in (0.4, 45, 89, 90, 560, 5399, 5400, 9000)] == [
        "0 s", "45 s", "89 s", "2 min", "9 min", "90 min", "1.5 h", "2.5 h"]
