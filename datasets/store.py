"""Packed frame stores: every frame once, in table order, read by index; raw pixels or JPEG bytes.

`raw` (the default): every frame decoded once into one uint8 N x 3 x H x W file, read by memory
map. Why raw pixels (measured on the 2-core dev box, one thread, 256x128 frames,
tests/benchmarks/test_data_speed.py and an ad-hoc run on the same data):
  - per-frame PIL decode + resize + to-tensor + normalise (the usual re-ID path): ~560 frames/s;
  - decoding JPEG bytes already in memory (what a JPEG store costs, before normalising): ~2,900 frames/s;
  - gathering a clip from this memory map: ~115,000 frames/s; with `loaders.normalize`: ~12,600 frames/s.
So a JPEG store caps every loader worker at the JPEG decode rate, while the memory map leaves only
the normalise (which can run on the accelerator). The price is disk: 98,304 bytes a frame
against ~9 KB of JPEG, i.e. 117 GB for MARS's 1.19 M frames instead of ~10 GB. Pages are read on
demand and written incrementally, so neither preparation nor loading holds the store in RAM.
Files: `frames.uint8` (raw C-order bytes, frame i at byte i * 3 * H * W).

`jpeg`: every frame's JPEG bytes concatenated, decoded on read by libjpeg-turbo (simplejpeg) in
the loader workers; for when the raw store does not fit the disk or the page cache. Random 8-frame
clips at 256x128, one process (tests/benchmarks/test_data_speed.py, page cache warm): ~4,200
frames/s and ~9 KB a frame, against ~86,000 frames/s and 98,304 bytes from the raw store. A source
file that is already a JPEG at the store's size is stored byte for byte (no generation loss);
other frames are encoded once. Files: `frames.jpeg` (the bytes) and `frames.index.npy` (int64
byte offsets, N + 1 entries: frame i is bytes offsets[i] .. offsets[i + 1] - 1).

Both: `frames.json` holds the decoded shape, dtype, layout and format (stores written before the
format existed lack it: raw). The shape lives in the sidecar rather than an .npy header so the
raw file can be truncated when --skip-corrupt drops frames after space for all was reserved.
"""

from __future__ import annotations

import json
import os
from importlib.metadata import version
from pathlib import Path

import numpy as np
import simplejpeg

from datasets.errors import DatasetError

DATA = "frames.uint8"
JPEG_DATA = "frames.jpeg"
INDEX = "frames.index.npy"
META = "frames.json"
FORMATS = ("raw", "jpeg")

# One decoded frame: its pixels (H x W x 3 uint8 RGB) and the source file's bytes when that file is a
# JPEG of exactly this size (else None). None in place of a frame: corrupt, never stored.
Frame = tuple[np.ndarray, bytes | None]


def decode_jpeg(data: bytes | np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """JPEG bytes -> H x W x 3 uint8 RGB (into `out` if given), pixel-identical to PIL's `.convert("RGB")`."""
    # Accurate DCT and fancy upsampling are libjpeg's defaults, which PIL uses; the fast ones differ by a few levels.
    return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=False, fastupsample=False, buffer=out)


def _decodes_to(data: bytes, pixels: np.ndarray) -> bool:
    """Whether JPEG `data` decodes (as FrameStore will) to exactly `pixels` (H x W x 3)."""
    try:
        return np.array_equal(decode_jpeg(data), pixels)
    except ValueError:  # simplejpeg's error for data libjpeg-turbo rejects
        return False


def _write_meta(directory: Path, frames: int, height: int, width: int, fmt: str) -> None:
    meta = {"shape": [frames, 3, height, width], "dtype": "uint8", "layout": "NCHW RGB", "format": fmt}
    (directory / META).write_text(json.dumps(meta) + "\n")


class RawWriter:
    """A new raw store in `directory` with room for `capacity` frames; picklable, so worker processes write in place.

    Frames go straight from the decoding process into the file (no pixels through pipes); frames
    never written (corrupt ones) are squeezed out by `close`.
    """

    def __init__(self, directory: Path, capacity: int, height: int, width: int) -> None:
        self.directory = Path(directory)
        self.shape = (capacity, 3, height, width)
        # The space is allocated now, so a full disk is an ENOSPC here rather than a SIGBUS in a worker's memory-mapped
        # write later (a sparse file would only fail when a page is first written).
        with open(self.directory / DATA, "wb") as f:
            if capacity:
                os.posix_fallocate(f.fileno(), 0, capacity * 3 * height * width)

    def encode(self, start: int, frames: list[Frame | None]) -> None:
        """Store `frames` at rows start .., in this (decoding) process; nothing is left for `write`."""
        frame_bytes = int(np.prod(self.shape[1:]))
        window = np.memmap(self.directory / DATA, np.uint8, "r+", offset=start * frame_bytes,
                           shape=(len(frames), *self.shape[1:]))
        for row, frame in zip(window, frames):
            if frame is not None:
                row[:] = frame[0].transpose(2, 0, 1)
        window.flush()

    def write(self, start: int, encoded: None) -> None:
        """Nothing: `encode` already wrote the pixels where they belong."""

    def describe(self) -> dict:
        """The store's entry in the manifest."""
        return {"format": "raw"}

    def close(self, kept: np.ndarray) -> int:
        """Keep the rows where `kept` is true (in order), cut the file there, record the shape; return the count."""
        rows = np.flatnonzero(kept)
        if len(rows) < self.shape[0]:
            frames = np.memmap(self.directory / DATA, np.uint8, "r+", shape=self.shape)
            # Row rows[i] >= i, so moving forward chunk by chunk never overwrites a row still to be read.
            for s in range(0, len(rows), 1024):
                chunk = rows[s:s + 1024]
                frames[s:s + len(chunk)] = frames[chunk]
            frames.flush()
            del frames
        os.truncate(self.directory / DATA, len(rows) * int(np.prod(self.shape[1:])))
        _write_meta(self.directory, len(rows), *self.shape[2:], "raw")
        return len(rows)


class JpegWriter:
    """A new JPEG store in `directory` for `capacity` frames: workers `encode` chunks, the parent `write`s them.

    Why the bytes go back to the parent rather than into the file from the workers: a frame's
    offset depends on the sizes of all frames before it, which a worker cannot know. The parent
    appending each chunk as it arrives (in table order) writes the file once, sequentially, with
    no part files to merge; ~2 MB per chunk of 256 frames is cheap to pipe (the raw store's 25 MB
    is not, hence its in-place writes). The object holds only settings and counts, so it stays
    cheap to pickle into every task; the byte lengths live in the index file until `close`.
    """

    def __init__(self, directory: Path, capacity: int, height: int, width: int, quality: int) -> None:
        self.directory = Path(directory)
        self.shape = (capacity, 3, height, width)
        self.quality = quality
        self.copied = self.encoded = 0  # frames stored as their source bytes / encoded here
        (self.directory / JPEG_DATA).write_bytes(b"")
        np.lib.format.open_memmap(self.directory / INDEX, "w+", np.int64, (capacity,))  # byte lengths until close

    def encode(self, start: int, frames: list[Frame | None]) -> tuple[list[bytes | None], int]:
        """Each frame's JPEG bytes (None if corrupt) and how many are source bytes; runs in the decoding process."""
        encoded, copied = [], 0
        for frame in frames:
            if frame is None:
                encoded.append(None)
            # Source bytes are kept only if they decode, exactly as the reader will, to the pixels the raw store
            # would hold: this catches what PIL and libjpeg-turbo decode differently (CMYK JPEGs) or only PIL accepts.
            elif frame[1] is not None and _decodes_to(frame[1], frame[0]):
                encoded.append(frame[1])
                copied += 1
            else:
                encoded.append(self._encode(frame[0]))
        return encoded, copied

    def _encode(self, pixels: np.ndarray) -> bytes:
        # 4:4:4: re-ID leans on clothing colour, which 4:2:0 keeps at half resolution; on synthetic frames resized
        # to 128x64 at quality 95, 4:4:4 halved the mean error (1.2 vs 2.6 levels, max 19 vs 61) for 30 % more
        # bytes, and its decode needs no chroma upsampling. Accurate DCT: encoding happens once, speed buys nothing.
        return simplejpeg.encode_jpeg(np.ascontiguousarray(pixels), self.quality, colorspace="RGB",
                                      colorsubsampling="444", fastdct=False)

    def write(self, start: int, encoded: tuple[list[bytes | None], int]) -> None:
        """Append `encode`'s bytes for rows start .. (called in row order) and record their lengths."""
        frames, copied = encoded
        with open(self.directory / JPEG_DATA, "ab") as f:
            f.write(b"".join(data for data in frames if data is not None))
        lengths = np.load(self.directory / INDEX, mmap_mode="r+")
        lengths[start:start + len(frames)] = [0 if data is None else len(data) for data in frames]
        lengths.flush()
        self.copied += copied
        self.encoded += sum(data is not None for data in frames) - copied

    def describe(self) -> dict:
        """The store's entry in the manifest: the quality used for encoded frames, and how many were."""
        return {"format": "jpeg", "quality": self.quality, "encoder": f"simplejpeg {version('simplejpeg')}",
                "copied_frames": self.copied, "encoded_frames": self.encoded}

    def close(self, kept: np.ndarray) -> int:
        """Keep the frames where `kept` is true (in order), write the offsets, record the shape; return the count."""
        # Corrupt frames have no bytes in the file, so dropping them only drops their (zero) lengths.
        lengths = np.load(self.directory / INDEX)[kept]
        np.save(self.directory / INDEX, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        _write_meta(self.directory, len(lengths), *self.shape[2:], "jpeg")
        return len(lengths)


class FrameStore:
    """Random-access reader of a raw or JPEG store; opens its files lazily so it pickles cheaply into loader workers."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        meta = json.loads((self.directory / META).read_text())
        self.format = meta.get("format", "raw")  # stores written before the JPEG format have no "format"
        if self.format not in FORMATS:
            raise DatasetError(f"{self.directory / META} names frame store format {self.format!r}, which this code "
                               f"cannot read (it knows {list(FORMATS)}); prepare the dataset again with this code.")
        self.shape = tuple(meta["shape"])
        if self.format == "raw":
            data, expected = self.directory / DATA, int(np.prod(self.shape))
            if data.stat().st_size < expected:
                raise DatasetError(f"{data} is truncated: {data.stat().st_size:,} bytes, {expected:,} expected for "
                                   f"{self.shape[0]:,} frames; prepare the dataset again.")
        self._data: np.memmap | None = None
        self._offsets: np.ndarray | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict:
        # A pickled np.memmap would copy the whole file into the pickle.
        return {**self.__dict__, "_data": None, "_offsets": None}

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Frames at store `indices` (any shape S) as a new uint8 array S x 3 x H x W."""
        if self.format == "raw":
            if self._data is None:
                self._data = np.memmap(self.directory / DATA, np.uint8, "r", shape=self.shape)
            return self._data[indices]
        return self._read_jpeg(np.asarray(indices))

    def _read_jpeg(self, indices: np.ndarray) -> np.ndarray:
        if self._data is None:
            self._data = np.memmap(self.directory / JPEG_DATA, np.uint8, "r")
            self._offsets = np.load(self.directory / INDEX, mmap_mode="r")
        _, _, height, width = self.shape
        # Decoding in place and transposing all frames at once is ~10 % faster than a copy per frame.
        frames = np.empty((indices.size, height, width, 3), np.uint8)
        for frame, i in zip(frames, indices.reshape(-1)):
            decode_jpeg(self._data[self._offsets[i]:self._offsets[i + 1]], out=frame)
        return np.ascontiguousarray(frames.transpose(0, 3, 1, 2)).reshape(*indices.shape, 3, height, width)
