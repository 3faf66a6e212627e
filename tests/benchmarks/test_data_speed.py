"""Clip loading from the frame store vs decoding JPEGs per frame, and the preparation rate (frames/s).

Run: pytest tests/benchmarks/test_data_speed.py --benchmark-only -n 0
"""

from __future__ import annotations

import timeit
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from datasets.loaders import TrainClips, normalize
from datasets.prepare import prepare
from datasets.sampling import chunk_random
from datasets.store import FrameStore
from datasets.synthetic import write_mars

HEIGHT, WIDTH, FRAMES, CLIPS = 256, 128, 8, 32  # 256 frames per round


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("speed") / "raw"
    write_mars(root, identities=8, cameras=3, tracklets_per_id=2, min_frames=24, max_frames=48,
               height=HEIGHT, width=WIDTH, seed=0)
    return root


@pytest.fixture(scope="module")
def prepared(raw: Path) -> Path:
    out = raw.parent / "prepared"
    prepare("mars", raw, out, HEIGHT, WIDTH)
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Single-process, single-thread loading, as inside one DataLoader worker.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _store_clips(dataset: TrainClips) -> None:
    for i in range(CLIPS):
        normalize(dataset[i % len(dataset), 0, i][0])


def _jpeg_clips(root: Path, dataset: TrainClips, paths: list[list[str]]) -> None:
    """The usual re-ID pipeline: PIL decode, resize, to float tensor, normalise, per frame."""
    for i in range(CLIPS):
        j = i % len(dataset)
        rng = np.random.default_rng([dataset.seed, 0, j])
        frames = []
        for k in chunk_random(len(paths[j]), FRAMES, rng):
            image = Image.open(root / paths[j][k]).convert("RGB").resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR)
            frames.append(normalize(torch.from_numpy(np.array(image)).permute(2, 0, 1)))
        torch.stack(frames)


def test_store_clip_loading(benchmark, raw: Path, prepared: Path):
    dataset = TrainClips(prepared, FRAMES, flip=False)
    paths = _frame_paths(prepared)
    benchmark(_store_clips, dataset)
    store_fps = CLIPS * FRAMES / benchmark.stats.stats.mean
    jpeg_fps = CLIPS * FRAMES / min(timeit.repeat(lambda: _jpeg_clips(raw, dataset, paths), number=1, repeat=3))
    benchmark.extra_info.update(store_frames_per_s=round(store_fps), jpeg_frames_per_s=round(jpeg_fps),
                                speedup=round(store_fps / jpeg_fps, 1))
    assert store_fps >= 5 * jpeg_fps


def test_jpeg_clip_loading(benchmark, raw: Path, prepared: Path):
    dataset = TrainClips(prepared, FRAMES, flip=False)
    benchmark(_jpeg_clips, raw, dataset, _frame_paths(prepared))
    benchmark.extra_info["frames_per_s"] = round(CLIPS * FRAMES / benchmark.stats.stats.mean)


@pytest.mark.parametrize("workers", [0, 2])
def test_preparation_rate(benchmark, raw: Path, tmp_path: Path, workers: int):
    manifest = benchmark.pedantic(prepare, args=("mars", raw, tmp_path / "out", HEIGHT, WIDTH, workers),
                                  rounds=2, iterations=1)
    benchmark.extra_info["frames_per_s"] = round(manifest["frames"] / benchmark.stats.stats.mean)


def _frame_paths(prepared: Path) -> list[list[str]]:
    """Raw frame paths of the training tracklets, in TrainClips order."""
    rows = pl.read_parquet(prepared / "tracklets.parquet").filter(pl.col("split") == "train")
    return rows["frames"].to_list()


def _store_reads(store: FrameStore, starts: np.ndarray) -> None:
    for start in starts:
        store.read(start + np.arange(FRAMES))


@pytest.mark.parametrize("fmt", ["raw", "jpeg"])
def test_random_clip_reads_per_store(benchmark, raw: Path, fmt: str):
    """Frames/s one loader worker reads from a raw and a JPEG store (page cache warm: dropping it needs root,
    so the raw figure is an upper bound where the store does not fit in RAM), and bytes on disk per frame."""
    out = raw.parent / f"prepared-{fmt}"
    manifest = prepare("mars", raw, out, HEIGHT, WIDTH, store=fmt)
    store = FrameStore(out)
    # Clips of consecutive frames at random places, as a chunk or segment sampler reads them from a tracklet.
    starts = np.random.default_rng(0).integers(0, len(store) - FRAMES, CLIPS)
    benchmark(_store_reads, store, starts)
    on_disk = sum(p.stat().st_size for p in out.glob("frames.*") if p.name != "frames.json")
    benchmark.extra_info.update(frames=len(store), frames_per_s=round(CLIPS * FRAMES / benchmark.stats.stats.mean),
                                bytes_per_frame=round(on_disk / len(store)), store=manifest["store"])
