"""Synthetic video re-ID datasets written in the official MARS or DukeMTMC-VideoReID layouts.

Each identity has a stable look (clothing colours from a small shared palette, a torso pattern,
sleeves, hair, a bag, build); each camera shifts colour, brightness, blur and noise; each
tracklet has its own background, position, scale and walking phase, sometimes an occluder;
each frame jitters. The palette is small and the camera colour shifts are of the order of the
gaps between palette colours, so identity is learnable but colour alone does not solve it.
Everything is drawn from generators keyed by (seed, role, index): deterministic given the seed.
"""

from __future__ import annotations

import functools
import io
import multiprocessing
import logging
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import scipy.io
from PIL import Image

from datasets.atomic import atomic_directory
from datasets.errors import DatasetError, command_parser, run_cli, seed_arg
from datasets.progress import Progress
from datasets.tracklets import tracklet_table

log = logging.getLogger(__name__)

PALETTE = np.array([
    [200, 30, 30], [30, 60, 170], [40, 140, 50], [230, 200, 40], [20, 20, 25], [235, 235, 230],
    [120, 120, 125], [110, 70, 40], [220, 120, 30], [120, 40, 140], [230, 150, 170], [30, 150, 160],
], dtype=np.float32)
SKIN = np.array([[240, 200, 170], [200, 150, 110], [140, 95, 60], [90, 60, 40]], dtype=np.float32)
HAIR = np.array([[20, 15, 10], [90, 60, 30], [200, 170, 90], [130, 130, 130]], dtype=np.float32)
JPEG_QUALITY = 90
MAT_HEADER = "MATLAB 5.0 MAT-file, written by nvan-bench datasets.synthetic"
MAT_HEADER_BYTES = 116


@dataclass(frozen=True)
class Look:
    """An identity's stable appearance; colours are RGB 0-255."""

    skin: np.ndarray
    hair: np.ndarray
    upper: np.ndarray
    lower: np.ndarray
    shoes: np.ndarray
    accent: np.ndarray
    bag_colour: np.ndarray
    pattern: int  # 0 plain, 1 horizontal stripes, 2 vertical stripes, 3 checks
    frequency: float  # pattern cycles per body height
    long_sleeves: bool
    bag: int  # 0 none, 1 left, 2 right
    build: float  # body width factor
    hair_length: float  # 0 short .. 1 shoulder length


@dataclass(frozen=True)
class Camera:
    """A camera's nuisance: colour gain and offset, background tint, blur radius (pixels), noise (grey levels)."""

    gain: np.ndarray
    offset: np.ndarray
    background: np.ndarray
    blur: int
    noise: float


def random_look(rng: np.random.Generator) -> Look:
    """A new identity's appearance."""
    colours = PALETTE[rng.choice(len(PALETTE), 4, replace=False)] + rng.normal(0, 12, (4, 3))
    return Look(
        skin=SKIN[rng.integers(len(SKIN))], hair=HAIR[rng.integers(len(HAIR))],
        upper=colours[0], lower=colours[1], accent=colours[2], bag_colour=colours[3],
        shoes=PALETTE[rng.choice([4, 5, 6, 7])], pattern=int(rng.choice(4, p=[0.4, 0.2, 0.2, 0.2])),
        frequency=float(rng.uniform(8, 16)), long_sleeves=bool(rng.random() < 0.5),
        bag=int(rng.choice(3, p=[0.5, 0.25, 0.25])), build=float(rng.uniform(0.85, 1.2)),
        hair_length=float(rng.random()),
    )


def random_camera(rng: np.random.Generator) -> Camera:
    """A camera's colour shift and image quality."""
    return Camera(
        gain=rng.uniform(0.75, 1.25, 3).astype(np.float32), offset=rng.normal(0, 12, 3).astype(np.float32),
        background=rng.uniform(60, 200, 3).astype(np.float32), blur=int(rng.integers(0, 3)),
        noise=float(rng.uniform(3, 9)),
    )


def render(look: Look | None, camera: Camera, frames: int, height: int, width: int,
           rng: np.random.Generator, junk: bool = False) -> np.ndarray:
    """A tracklet of `frames` images (frames, H, W, 3) uint8; look None renders background only (junk)."""
    y = ((np.arange(height, dtype=np.float32) + 0.5) / height)[None, :, None]
    x = ((np.arange(width, dtype=np.float32) + 0.5) / width)[None, None, :]
    # Background: the camera's tint, a vertical gradient, a low-frequency texture and a floor.
    tint = camera.background + rng.normal(0, 20, 3)
    a, b, c = rng.uniform(1, 4), rng.uniform(1, 6), rng.uniform(0, 2 * np.pi)
    shade = 0.8 + 0.3 * y[0] + 0.1 * np.sin(2 * np.pi * (a * x[0] + b * y[0]) + c)
    image = np.broadcast_to((shade[..., None] * tint).astype(np.float32), (frames, height, width, 3)).copy()
    floor = y[0, :, 0] > rng.uniform(0.8, 0.9)
    image[:, floor] *= 0.7

    def paint(mask: np.ndarray, colour: np.ndarray) -> None:
        np.copyto(image, np.broadcast_to(colour, image.shape), where=mask[..., None])

    if look is not None:
        f = np.arange(frames, dtype=np.float32)[:, None, None]
        scale = rng.uniform(0.85, 1.0) * (1 + rng.normal(0, 0.02, (frames, 1, 1)))
        centre = 0.5 + (rng.choice([-1, 1]) * rng.uniform(0.3, 0.45) if junk else rng.uniform(-0.06, 0.06))
        centre = centre + rng.normal(0, 0.015, (frames, 1, 1))
        top = rng.uniform(0.01, 0.06) + rng.normal(0, 0.01, (frames, 1, 1))
        swing = 0.25 * np.sin(rng.uniform(0, 2 * np.pi) + f * rng.uniform(0.4, 0.8))
        # Body coordinates in body heights: v from head (0) to feet (1), u across, aspect kept.
        v = (y - top) / (0.95 * scale)
        u = (x - centre) * (width / height) / (0.95 * scale)
        w = look.build
        for side in (-1, 1):
            leg = np.abs(u - side * 0.055 * w - side * swing * (v - 0.52)) < 0.045 * w
            paint(leg & (v > 0.52) & (v < 0.94), look.lower)
            paint(leg & (v >= 0.92) & (v < 0.98), look.shoes)
        torso = (np.abs(u) < 0.12 * w * (1 - 0.15 * (v - 0.17))) & (v > 0.17) & (v < 0.56)
        stripes = {1: np.sin(2 * np.pi * look.frequency * v) > 0, 2: np.sin(2 * np.pi * look.frequency * u) > 0}
        stripes[3] = stripes[1] ^ stripes[2]
        paint(torso, look.upper)
        if look.pattern:
            paint(torso & stripes[look.pattern], look.accent)
        for side in (-1, 1):
            arm = (np.abs(side * u - 0.145 * w - 0.1 * side * swing * (v - 0.19)) < 0.03 * w) & (v > 0.19) & (v < 0.5)
            paint(arm, look.upper)
            if not look.long_sleeves:
                paint(arm & (v > 0.3), look.skin)
        head_v = (v - 0.09) / 0.08
        paint(((u / 0.075) ** 2 + head_v ** 2 < 1.1) & (v < 0.05 + 0.15 * look.hair_length), look.hair)
        paint(((u / 0.06) ** 2 + head_v ** 2 < 1) & (v > 0.05), look.skin)
        if look.bag:
            side = -1 if look.bag == 1 else 1
            paint((np.abs(u - side * 0.17 * w) < 0.05) & (v > 0.34) & (v < 0.56), look.bag_colour)
    if junk or rng.random() < 0.3:
        # An occluder (another pedestrian, a pole, a car) drifting across part of the frame.
        left = rng.uniform(-0.3, 0.9) + rng.uniform(-0.02, 0.02) * np.arange(frames)[:, None, None]
        right = left + rng.uniform(0.15, 0.45)
        occluder = (x > left) & (x < right) & (y > rng.uniform(0.0, 0.6))
        paint(occluder, PALETTE[rng.integers(len(PALETTE))] * rng.uniform(0.6, 1.0))
    brightness = rng.uniform(0.85, 1.15) * (1 + rng.normal(0, 0.04, (frames, 1, 1, 1)))
    image = image * camera.gain * brightness + camera.offset
    image = _box_blur(image, camera.blur + int(rng.random() < 0.3))
    image += rng.normal(0, camera.noise, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def _box_blur(images: np.ndarray, radius: int) -> np.ndarray:
    """Mean filter of (2 r + 1)^2 pixels over axes 1 and 2 (edges replicated)."""
    if radius == 0:
        return images
    k = 2 * radius + 1
    for axis in (1, 2):
        pad = [(0, 0)] * images.ndim
        pad[axis] = (radius + 1, radius)
        sums = np.cumsum(np.pad(images, pad, mode="edge"), axis=axis)
        n = images.shape[axis]
        images = (np.take(sums, np.arange(k, k + n), axis=axis) - np.take(sums, np.arange(n), axis=axis)) / k
    return images


@dataclass(frozen=True)
class Plan:
    """What one synthetic tracklet is: split, pid, camera, number within (pid, camera), frames."""

    split: str
    pid: int
    camera: int
    number: int
    frames: int
    look: int  # index of the Look; -1 for junk (no person)


def _plan(identities: int, cameras: int, tracklets_per_id: int, min_frames: int, max_frames: int,
          distractors: int, junk: int, seed: int, zero_pid_distractors: bool,
          test_identities: int | None = None) -> list[Plan]:
    """Tracklets of both splits: `test_identities` of the identities (default half) test, the rest train, each
    seen by >= 2 cameras."""
    rng = np.random.default_rng([seed, 0])
    pids = np.sort(rng.choice(np.arange(1, 1501), identities + (0 if zero_pid_distractors else distractors),
                              replace=False))
    trained = identities // 2 if test_identities is None else identities - test_identities
    train = set(rng.choice(identities, trained, replace=False).tolist())
    plans, counter = [], {}

    def add(split: str, pid: int, camera: int, look: int) -> None:
        counter[pid, camera] = counter.get((pid, camera), 0) + 1
        frames = int(rng.integers(min_frames, max_frames + 1))
        plans.append(Plan(split, pid, camera, counter[pid, camera], frames, look))

    for i in range(identities):
        # About two tracklets per (identity, camera), as in MARS (~6 per pair): the first in each
        # camera is the query, so the others stay in the gallery of the standard protocol.
        seen = rng.permutation(cameras)[:max(2, min(tracklets_per_id // 2, cameras))] + 1
        for k in range(tracklets_per_id):
            add("train" if i in train else "test", int(pids[i]), int(seen[k % len(seen)]), i)
    for j in range(distractors):
        pid = 0 if zero_pid_distractors else int(pids[identities + j])
        add("test", pid, int(rng.integers(1, cameras + 1)), identities + j)
    for _ in range(junk):
        add("test", -1, int(rng.integers(1, cameras + 1)), -1)
    return plans


def _check(identities: int, cameras: int, tracklets_per_id: int, min_frames: int, max_frames: int,
           height: int, width: int, distractors: int, junk: int, test_identities: int | None = None,
           workers: int = 0) -> None:
    if test_identities is not None and not 1 <= test_identities < identities:
        raise DatasetError(f"--test-identities {test_identities}: the test split needs at least 1 of the {identities} "
                           f"identities and training at least 1; give 1 to {identities - 1}, or leave it out for half.")
    if workers < 0:
        raise DatasetError(f"--workers {workers}: give 0 (render in this process) or more processes.")
    if identities < 2 or cameras < 2 or tracklets_per_id < 2:
        raise DatasetError(
            f"synthetic data needs >= 2 identities, >= 2 cameras and >= 2 tracklets per identity (queries need a "
            f"match in another camera); got {identities}, {cameras}, {tracklets_per_id}."
        )
    if not 1 <= min_frames <= max_frames <= 999:
        raise DatasetError(f"frames per tracklet must satisfy 1 <= --min-frames <= --max-frames <= 999 "
                           f"(MARS names have 3 frame digits); got {min_frames}, {max_frames}.")
    if height < 16 or width < 8 or min(distractors, junk) < 0 or identities + distractors > 1500:
        raise DatasetError(f"need --height >= 16, --width >= 8 pixels, non-negative --distractors/--junk and at most "
                           f"1500 identities + distractors; got {height}x{width}, {distractors}, {junk}, {identities}.")


def _render_plan(plan: Plan, height: int, width: int, seed: int, index: int) -> np.ndarray:
    """Tracklet `index`'s frames: every draw comes from a generator keyed by (seed, role, index), so a tracklet is
    the same whichever process renders it and in whatever order."""
    look = None if plan.look < 0 else random_look(np.random.default_rng([seed, 1, plan.look]))
    camera = random_camera(np.random.default_rng([seed, 3, plan.camera]))
    return render(look, camera, plan.frames, height, width, np.random.default_rng([seed, 2, index]), junk=plan.look < 0)


def _write_tracklet(job: tuple[Plan, int, list[Path]], height: int, width: int, seed: int) -> None:
    """Render one tracklet (plan, index, frame paths) and save its frames as JPEGs."""
    plan, index, paths = job
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for frame, path in zip(_render_plan(plan, height, width, seed, index), paths):
        Image.fromarray(frame).save(path, quality=JPEG_QUALITY)


def _write_all(jobs: list[tuple[Plan, int, list[Path]]], height: int, width: int, seed: int, workers: int) -> None:
    """Render and save every tracklet, in this process or in `workers` processes (the same bytes either way)."""
    write = functools.partial(_write_tracklet, height=height, width=width, seed=seed)
    with Progress(len(jobs), "synthesize", "tracklets") as progress:
        if workers == 0:
            for job in jobs:
                write(job)
                progress.update(1)
            return
        # forkserver: workers do not inherit the parent's threads (polars) that plain fork can deadlock on.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
            for _ in pool.map(write, jobs, chunksize=16):
                progress.update(1)


# Written into every synthetic dataset's root, so prepared data and its results stay marked synthetic.
SYNTHETIC_MARKER = "SYNTHETIC.txt"


def _mark(root: Path) -> None:
    (root / SYNTHETIC_MARKER).write_text("Synthetic data written by `python -m datasets.synthetic` (nvan-bench), "
                                         "not a real dataset.\n")


def write_mars(out: Path, identities: int = 24, cameras: int = 6, tracklets_per_id: int = 4, min_frames: int = 8,
               max_frames: int = 24, height: int = 128, width: int = 64, distractors: int = 2, junk: int = 2,
               seed: int = 0, test_identities: int | None = None, workers: int = 0) -> pl.DataFrame:
    """Write a MARS-layout dataset to `out` (atomically); return the tracklet table read_mars must produce.

    `test_identities` of the `identities` go to the test split (default half); `workers` processes render.
    """
    _check(identities, cameras, tracklets_per_id, min_frames, max_frames, height, width, distractors, junk,
           test_identities, workers)
    plans = _plan(identities, cameras, tracklets_per_id, min_frames, max_frames, distractors, junk, seed, True,
                  test_identities)
    folder = {p.pid: "00-1" if p.pid == -1 else f"{p.pid:04d}" for p in plans}
    plans.sort(key=lambda p: (p.split, folder[p.pid], p.camera, p.number))
    test_pids = {p.pid for p in plans if p.split == "test" and p.pid > 0}
    first_in_camera = {}
    for i, p in enumerate(plans):
        if p.pid in test_pids:
            first_in_camera.setdefault((p.pid, p.camera), i)
    jobs, rows = [], []
    with atomic_directory(out) as tmp:
        _mark(tmp)
        (tmp / "info").mkdir()
        for split in ("train", "test"):
            names, info, queries = [], [], []
            for i, p in enumerate(plans):
                if p.split != split:
                    continue
                stem = f"{folder[p.pid]}C{p.camera}T{p.number:04d}"
                frame_names = [f"{stem}F{f:03d}.jpg" for f in range(1, p.frames + 1)]
                jobs.append((p, i, [tmp / f"bbox_{split}" / folder[p.pid] / n for n in frame_names]))
                info.append([len(names) + 1, len(names) + p.frames, p.pid, p.camera])
                names += frame_names
                is_query = first_in_camera.get((p.pid, p.camera)) == i
                if is_query:
                    queries.append(len(info))
                paths = [f"bbox_{split}/{folder[p.pid]}/{n}" for n in frame_names]
                rows.append((split, p.pid, p.camera, stem, is_query, paths))
            (tmp / "info" / f"{split}_name.txt").write_text("\n".join(names) + "\n")
            _save_mat(tmp / "info" / f"tracks_{split}_info.mat", f"track_{split}_info", np.array(info, dtype=np.float64))
        _save_mat(tmp / "info" / "query_IDX.mat", "query_IDX", np.array([queries], dtype=np.float64))
        _write_all(jobs, height, width, seed, workers)
    return tracklet_table(*(list(c) for c in zip(*rows)))


def _save_mat(path: Path, name: str, array: np.ndarray) -> None:
    """Write one variable as a MATLAB 5 file whose bytes depend only on the array."""
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {name: array})
    data = bytearray(buffer.getvalue())
    # savemat stamps the wall-clock time into the 116-byte text header; a fixed header keeps
    # the dataset byte-identical across runs, so DVC sees the same hash for the same seed.
    data[:MAT_HEADER_BYTES] = MAT_HEADER.ljust(MAT_HEADER_BYTES).encode("ascii")
    path.write_bytes(bytes(data))


def write_duke(out: Path, identities: int = 24, cameras: int = 6, tracklets_per_id: int = 4, min_frames: int = 8,
               max_frames: int = 24, height: int = 128, width: int = 64, distractors: int = 2, seed: int = 0,
               underscore_names: bool = False, test_identities: int | None = None, workers: int = 0) -> pl.DataFrame:
    """Write a DukeV-layout dataset to `out` (atomically); return the tracklet table read_duke must produce.

    One query per test identity, copied from its first gallery tracklet; `distractors` extra
    identities appear only in the gallery (ordinary pids, as in DukeV).
    """
    _check(identities, cameras, tracklets_per_id, min_frames, max_frames, height, width, distractors, 0,
           test_identities, workers)
    plans = _plan(identities, cameras, tracklets_per_id, min_frames, max_frames, distractors, 0, seed, False,
                  test_identities)
    plans.sort(key=lambda p: (p.split == "test", p.pid, p.camera, p.number))
    query_pids = {p.pid for p in plans if p.split == "test" and p.look < identities}
    jobs, rows, numbers, queried = [], [], {}, set()
    rng = np.random.default_rng([seed, 4])
    with atomic_directory(out) as tmp:
        _mark(tmp)
        for i, p in enumerate(plans):
            numbers[p.pid] = numbers.get(p.pid, 0) + 1
            key = f"{p.pid:04d}/{numbers[p.pid]:04d}"
            start = int(rng.integers(0, 90000))
            sep = "_" if underscore_names else ""
            names = [f"{p.pid:04d}{sep}C{p.camera}{sep}F{f:04d}{sep}X{start + f:05d}.jpg"
                     for f in range(1, p.frames + 1)]
            folder = "train" if p.split == "train" else "gallery"
            jobs.append((p, i, [tmp / folder / key / n for n in names]))
            is_query = p.pid in query_pids and p.pid not in queried
            if is_query:
                queried.add(p.pid)
            rows.append((p.split, p.pid, p.camera, key, is_query, [f"{folder}/{key}/{n}" for n in names]))
        _write_all(jobs, height, width, seed, workers)
        for split, _, _, key, is_query, _ in rows:
            if is_query:
                shutil.copytree(tmp / "gallery" / key, tmp / "query" / key)
    return tracklet_table(*(list(c) for c in zip(*rows)))


def main(argv: list[str] | None = None) -> int:
    """CLI: write one synthetic dataset; DatasetError exits with code 2."""
    parser = command_parser(
        "datasets.synthetic", "Write a synthetic video re-ID dataset in the MARS or DukeV layout.",
        ["python -m datasets.synthetic --format mars --out data/raw/synthetic/mars --identities 350 "
         "--test-identities 300 --tracklets-per-id 10 --distractors 6 --junk 4",
         "python -m datasets.synthetic --format duke --out data/raw/synthetic/duke --identities 60 "
         "--test-identities 30 --cameras 8 --tracklets-per-id 6 --distractors 4 --seed 1",
         "python -m datasets.synthetic --format mars --out data/raw/tiny-mars --identities 8 --cameras 2"])
    parser.add_argument("--format", required=True, choices=["mars", "duke"],
                        help="the official layout to write: mars (MARS) or duke (DukeMTMC-VideoReID)")
    parser.add_argument("--out", required=True, type=Path, help="dataset root to create (replaced if present)")
    parser.add_argument("--identities", type=int, default=24, help="identities of both splits")
    parser.add_argument("--test-identities", type=int, help="identities of the test split (default: half)")
    parser.add_argument("--cameras", type=int, default=6, help="cameras; each identity is seen by at least 2")
    parser.add_argument("--tracklets-per-id", type=int, default=4, help="tracklets of each identity")
    parser.add_argument("--min-frames", type=int, default=8, help="frames per tracklet, lower bound")
    parser.add_argument("--max-frames", type=int, default=24, help="frames per tracklet, upper bound")
    parser.add_argument("--height", type=int, default=128, help="image height in pixels")
    parser.add_argument("--width", type=int, default=64, help="image width in pixels")
    parser.add_argument("--distractors", type=int, default=2,
                        help="MARS: pid-0 distractor tracklets; Duke: gallery-only identities")
    parser.add_argument("--junk", type=int, default=2, help="MARS only: pid -1 junk tracklets")
    parser.add_argument("--underscore-names", action="store_true", help="Duke only: 0001_C6_F0099_X30823.jpg names")
    parser.add_argument("--seed", type=seed_arg, default=0,
                        help="seed of every random choice, an integer >= 0: the same seed writes the same bytes")
    parser.add_argument("--workers", type=int, default=0, help="rendering processes; 0 renders in this process "
                                                               "(the same bytes either way)")
    a = parser.parse_args(argv)
    common = dict(identities=a.identities, cameras=a.cameras, tracklets_per_id=a.tracklets_per_id,
                  min_frames=a.min_frames, max_frames=a.max_frames, height=a.height, width=a.width,
                  distractors=a.distractors, seed=a.seed, test_identities=a.test_identities, workers=a.workers)
    if a.format == "mars":
        table = write_mars(a.out, junk=a.junk, **common)
    else:
        table = write_duke(a.out, underscore_names=a.underscore_names, **common)
    log.info("wrote %s: %d tracklets, %d frames", a.out, table.height, table["num_frames"].sum())
    return 0


if __name__ == "__main__":
    run_cli(main)
