"""Raw MARS / DukeV layout -> data/prepared/<name>/: tracklets.parquet, manifest.json and the frame store.

A DVC stage (python -m datasets.prepare). Frames are decoded and resized by worker processes,
written in table order, and the whole directory appears by one rename when complete.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import multiprocessing
import shutil
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import version
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from datasets.atomic import atomic_directory
from datasets.duke import read_duke
from datasets.errors import DatasetError, command_parser, run_cli
from datasets.integrity import describe_files, store_hash
from datasets.mars import read_mars
from datasets.progress import Progress
from datasets.store import FORMATS, Frame, JpegWriter, RawWriter
from datasets.synthetic import SYNTHETIC_MARKER
from datasets.tracklets import SPLITS, require_splits

log = logging.getLogger(__name__)

READERS = {"mars": read_mars, "duke": read_duke}
# Frames per worker task: at 256x128, 25 MB of pixels the worker writes itself (raw) or ~2 MB of JPEG it returns.
CHUNK_FRAMES = 256
CODE_FILES = ("atomic.py", "duke.py", "integrity.py", "mars.py", "prepare.py", "store.py", "tracklets.py")
Writer = RawWriter | JpegWriter


def prepare(
    layout: str, root: Path, out: Path, height: int = 256, width: int = 128, workers: int = 0,
    skip_corrupt: bool = False, store: str = "raw", quality: int = 95,
) -> dict:
    """Validate, index and pack the dataset at `root` into `out`; return the manifest. workers=0 decodes in-process.

    `store` is the frame store's format ("raw" or "jpeg"); `quality` (1-100) is the JPEG quality
    of frames the jpeg store must encode (those whose source is not a JPEG at height x width).
    """
    if layout not in READERS:
        raise DatasetError(f"unknown dataset layout {layout!r}; use one of {sorted(READERS)}.")
    if height < 1 or width < 1 or workers < 0:
        raise DatasetError(
            f"--height {height}, --width {width} and --workers {workers}: sizes must be positive pixel counts and "
            f"workers >= 0 (0 decodes in this process)."
        )
    _check_store(store, quality)
    table = READERS[layout](root)
    needed = _bytes_needed(table, Path(root), store, height, width)
    _check_space(Path(out), needed)
    try:
        return _write(layout, table, Path(root), Path(out), height, width, workers, skip_corrupt, store, quality)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        raise DatasetError(f"the disk filled up while writing {out}: the store needs about {needed:,} bytes and "
                           f"{_free(Path(out)):,} are free now on {_existing(Path(out))}; nothing was kept. Free space "
                           f"there (or give another --out) and prepare again.") from None


def _write(layout: str, table: pl.DataFrame, root: Path, out: Path, height: int, width: int, workers: int,
           skip_corrupt: bool, store: str, quality: int) -> dict:
    """Pack the dataset into a temporary folder beside `out`, record its manifest, rename it into place."""
    with atomic_directory(out) as tmp:
        writer = _writer(store, tmp, int(table["num_frames"].sum()), height, width, quality)
        table, dropped_frames, content_hash = _pack(table, Path(root), writer, workers, skip_corrupt,
                                                    f"prepare {Path(out).name}")
        dropped_tracklets = table.filter(pl.col("num_frames") == 0)["tracklet"].to_list()
        for key in dropped_tracklets:
            log.warning("dropped tracklet %s: all its frames are corrupt", key)
        table = table.filter(pl.col("num_frames") > 0)
        require_splits(table, f"{layout} root {root} after --skip-corrupt",
                       "too many frames are corrupt; restore the images logged above from the dataset archive.")
        manifest = _manifest(layout, table, height, width, content_hash, dropped_frames, dropped_tracklets)
        manifest["store"] = writer.describe()
        manifest["synthetic"] = (Path(root) / SYNTHETIC_MARKER).exists()
        table.write_parquet(tmp / "tracklets.parquet")
        # What later runs check before they trust the data (datasets.integrity).
        manifest["files"] = describe_files(tmp)
        manifest["store_hash"] = store_hash(manifest["content_hash"], manifest["files"])
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _bytes_needed(table: pl.DataFrame, root: Path, store: str, height: int, width: int) -> int:
    """Bytes the store will take: exact for raw pixels; for JPEG, the source files' size (frames kept as they are, or
    re-encoded at about their size)."""
    if store == "raw":
        return int(table["num_frames"].sum()) * 3 * height * width
    return sum((root / path).stat().st_size for path in table["frames"].explode().to_list())


def _existing(path: Path) -> Path:
    return next((p for p in (path, *path.parents) if p.exists()), Path("."))


def _free(path: Path) -> int:
    return shutil.disk_usage(_existing(path)).free


def _check_space(out: Path, needed: int) -> None:
    """DatasetError, before anything is written, when the disk under `out` has not room for `needed` bytes."""
    free = _free(out)
    if free < needed:
        raise DatasetError(f"not enough space for {out}: the store needs about {needed:,} bytes and "
                           f"{_existing(out)} has {free:,} free; free space there, give another --out, or prepare a "
                           f"JPEG store (--store jpeg, about a tenth of the raw size).")


def _check_store(store: str, quality: int) -> None:
    """Reject an unknown --store or a --jpeg-quality outside 1..100."""
    if store not in FORMATS:
        raise DatasetError(f"--store {store!r} is not a frame store format; use raw (decoded pixels: fastest to "
                           f"read, 96 KB a 256x128 frame) or jpeg (JPEG bytes decoded on read: ~10x smaller).")
    if not 1 <= quality <= 100:
        raise DatasetError(f"--jpeg-quality {quality} is outside 1..100; use e.g. the default 95 (frames the jpeg "
                           f"store has to re-encode lose little at 90 or more).")


def _writer(store: str, tmp: Path, capacity: int, height: int, width: int, quality: int) -> Writer:
    """A new, empty store of format `store` in `tmp` for `capacity` frames of height x width pixels."""
    if store == "jpeg":
        return JpegWriter(tmp, capacity, height, width, quality)
    return RawWriter(tmp, capacity, height, width)


def _pack(
    table: pl.DataFrame, root: Path, writer: Writer, workers: int, skip_corrupt: bool, desc: str,
) -> tuple[pl.DataFrame, list[str], str]:
    """Decode every frame into the store; return the table with offsets, the dropped frames and the input hash."""
    paths = table["frames"].explode().to_list()
    kept = np.ones(len(paths), dtype=bool)
    digest = hashlib.blake2b(table.drop("frames").write_csv().encode(), digest_size=32)
    dropped = []
    with Progress(len(paths), desc, "frames") as progress:
        for start, digests, corrupt, encoded in _decoded(writer, root, paths, workers):
            for i, reason in corrupt:
                path = root / paths[start + i]
                if not skip_corrupt:
                    raise DatasetError(
                        f"image {path} cannot be decoded ({reason}); restore it from the original dataset archive, "
                        f"or rerun with --skip-corrupt to drop corrupt frames (logged and listed in manifest.json)."
                    )
                log.warning("skipped corrupt frame %s (%s)", path, reason)
                kept[start + i] = False
                dropped.append(paths[start + i])
            for path, d in zip(paths[start:start + len(digests)], digests):
                digest.update(path.encode() + b"\0" + d)
            writer.write(start, encoded)
            progress.update(len(digests))
    writer.close(kept)
    num_frames = table["num_frames"].to_numpy().copy()
    if dropped:
        # Frames of one tracklet are consecutive in `paths`, so its kept ones stay consecutive in the store.
        owner = np.repeat(np.arange(table.height), num_frames)
        num_frames = np.bincount(owner[kept], minlength=table.height)
        kept_paths = [p for p, k in zip(paths, kept) if k]
        ends = np.cumsum(num_frames)
        table = table.with_columns(frames=pl.Series([kept_paths[e - n:e] for e, n in zip(ends, num_frames)]))
    table = table.with_columns(
        num_frames=pl.Series(num_frames, dtype=pl.Int64),
        frame_offset=pl.Series(np.cumsum(num_frames) - num_frames, dtype=pl.Int64),
    )
    columns = ["split", "pid", "camera", "tracklet", "num_frames", "frame_offset", "is_query", "is_junk",
               "is_distractor", "frames"]
    return table.select(columns), dropped, digest.hexdigest()


def _decoded(
    writer: Writer, root: Path, paths: list[str], workers: int,
) -> Iterator[tuple[int, list[bytes], list[tuple[int, str]], object]]:
    """Decode all frames; per chunk, in order, yield (first index, file digests, corrupt (index, reason), encoded)."""
    starts = range(0, len(paths), CHUNK_FRAMES)
    if workers == 0:
        for s in starts:
            yield s, *_decode_chunk(writer, str(root), paths[s:s + CHUNK_FRAMES], s)
        return
    # forkserver: workers do not inherit the parent's threads (polars, torch) that plain fork can deadlock on.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
        pending = deque()
        for s in starts:
            pending.append((s, pool.submit(_decode_chunk, writer, str(root), paths[s:s + CHUNK_FRAMES], s)))
            if len(pending) >= 2 * workers:  # bounded, so an early error stops the work soon
                s0, future = pending.popleft()
                yield s0, *future.result()
        while pending:
            s0, future = pending.popleft()
            yield s0, *future.result()


def _decode_chunk(
    writer: Writer, root: str, paths: list[str], start: int,
) -> tuple[list[bytes], list[tuple[int, str]], object]:
    """Decode and resize `paths` (store rows start..); return file digests, the corrupt ones, `encode`'s result."""
    _, _, height, width = writer.shape
    frames: list[Frame | None] = []
    digests, corrupt = [], []
    for i, path in enumerate(paths):
        data = (Path(root) / path).read_bytes()
        digests.append(hashlib.blake2b(data, digest_size=16).digest())
        try:
            image = Image.open(io.BytesIO(data))
            is_jpeg = image.format == "JPEG"  # convert() returns an image without a format
            image = image.convert("RGB")
        except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for truncated or garbled files
            corrupt.append((i, str(e)))
            frames.append(None)
            continue
        native = image.size == (width, height)
        if not native:
            image = image.resize((width, height), Image.Resampling.BILINEAR)
        frames.append((np.asarray(image), data if is_jpeg and native else None))
    return digests, corrupt, writer.encode(start, frames)


def _manifest(
    layout: str, table: pl.DataFrame, height: int, width: int, content_hash: str,
    dropped_frames: list[str], dropped_tracklets: list[str],
) -> dict:
    """Counts per split, sizes, input hash and code version; deterministic so unchanged input gives equal bytes."""
    splits = {}
    for split in SPLITS:
        rows = table.filter(pl.col("split") == split)
        splits[split] = {
            "tracklets": rows.height,
            "pids": rows["pid"].n_unique(),
            "cameras": sorted(rows["camera"].unique().to_list()),
            "frames": int(rows["num_frames"].sum()),
            "queries": int(rows["is_query"].sum()),
            "junk_tracklets": int(rows["is_junk"].sum()),
            "distractor_tracklets": int(rows["is_distractor"].sum()),
        }
    source = hashlib.blake2b(digest_size=32)
    for name in CODE_FILES:
        source.update((Path(__file__).parent / name).read_bytes())
    return {
        "format": layout,
        "image_size": {"height": height, "width": width},
        "frames": int(table["num_frames"].sum()),
        "splits": splits,
        "content_hash": f"blake2b:{content_hash}",
        "code_version": {"package": version("nvan-bench"), "datasets_source": f"blake2b:{source.hexdigest()}"},
        "dropped_frames": dropped_frames,
        "dropped_tracklets": dropped_tracklets,
    }


def main(argv: list[str] | None = None) -> int:
    """CLI: prepare one dataset; DatasetError exits with code 2."""
    parser = command_parser(
        "datasets.prepare", "Pack a MARS or DukeMTMC-VideoReID layout into a frame store.",
        ["python -m datasets.prepare --format mars --root data/raw/synthetic/mars --out data/prepared/mars "
         "--height 64 --width 32",
         "python -m datasets.prepare --format duke --root data/raw/synthetic/duke --out data/prepared/duke-jpeg "
         "--height 64 --width 32 --store jpeg --workers 2"])
    parser.add_argument("--format", required=True, choices=sorted(READERS), help="the layout of --root")
    parser.add_argument("--root", required=True, type=Path, help="the dataset's root folder (official layout)")
    parser.add_argument("--out", required=True, type=Path, help="output folder, e.g. data/prepared/mars")
    parser.add_argument("--height", type=int, default=256, help="frame height in pixels")
    parser.add_argument("--width", type=int, default=128, help="frame width in pixels")
    parser.add_argument("--workers", type=int, default=0, help="decoding processes; 0 decodes in this process")
    parser.add_argument("--skip-corrupt", action="store_true", help="drop undecodable frames instead of failing")
    parser.add_argument("--store", default="raw",
                        help="frame store format: raw (decoded pixels, fastest to read) or jpeg (JPEG bytes decoded "
                             "on read, ~10x smaller; source JPEGs at the target size kept as is)")
    parser.add_argument("--jpeg-quality", type=int, default=95,
                        help="quality 1-100 of frames the jpeg store has to encode (resized or not JPEG)")
    args = parser.parse_args(argv)
    manifest = prepare(args.format, args.root, args.out, args.height, args.width, args.workers, args.skip_corrupt,
                       args.store, args.jpeg_quality)
    log.info("prepared %s: %d frames, %s", args.out, manifest["frames"], json.dumps(manifest["splits"]))
    return 0


if __name__ == "__main__":
    run_cli(main)
