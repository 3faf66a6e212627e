"""Packed frame store: every frame decoded once into one uint8 N x 3 x H x W file, read by memory map.

Why raw pixels and not JPEG bytes in shards (measured on the 2-core dev box, one thread, 256x128
frames, tests/benchmarks/test_data_speed.py and an ad-hoc run on the same data):
  - per-frame PIL decode + resize + to-tensor + normalise (the usual re-ID path): ~560 frames/s;
  - decoding JPEG bytes already in memory (what shards would cost, before normalising): ~2,900 frames/s;
  - gathering a clip from this memory map: ~115,000 frames/s; with `loaders.normalize`: ~12,600 frames/s.
So shards would cap every loader worker at the JPEG decode rate, while the memory map leaves only
the normalise (which can run on the accelerator). The price is disk: 98,304 bytes a frame
against ~9 KB of JPEG, i.e. 117 GB for MARS's 1.19 M frames instead of ~10 GB. Pages are read on
demand and written incrementally, so neither preparation nor loading holds the store in RAM.

Files: `frames.uint8` (raw C-order bytes, frame i at byte i * 3 * H * W) and `frames.json`
(shape, dtype, layout). The shape lives in the sidecar rather than an .npy header so the file
can be truncated when --skip-corrupt drops frames after space for all of them was reserved.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

DATA = "frames.uint8"
META = "frames.json"


class StoreWriter:
    """A new store in `directory` with room for `capacity` frames; picklable, so worker processes write in place.

    Frames go straight from the decoding process into the file (no pixels through pipes); frames
    never written (corrupt ones) are squeezed out by `close`.
    """

    def __init__(self, directory: Path, capacity: int, height: int, width: int) -> None:
        self.directory = Path(directory)
        self.shape = (capacity, 3, height, width)
        # A sparse file: reserving MARS's 117 GB costs no disk until frames are written.
        with open(self.directory / DATA, "wb") as f:
            f.truncate(capacity * 3 * height * width)

    def write(self, start: int, frames: np.ndarray) -> None:
        """Store `frames` (n, 3, H, W) uint8 at rows start .. start + n - 1."""
        frame_bytes = int(np.prod(self.shape[1:]))
        window = np.memmap(self.directory / DATA, np.uint8, "r+", offset=start * frame_bytes,
                           shape=(len(frames), *self.shape[1:]))
        window[:] = frames
        window.flush()

    def close(self, kept: np.ndarray) -> int:
        """Keep the rows where `kept` is true (in order), cut the file after them, record the shape; return the count."""
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
        meta = {"shape": [len(rows), *self.shape[1:]], "dtype": "uint8", "layout": "NCHW RGB"}
        (self.directory / META).write_text(json.dumps(meta) + "\n")
        return len(rows)


class FrameStore:
    """Random-access reader of a store; opens the memory map lazily so it pickles cheaply into loader workers."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        meta = json.loads((self.directory / META).read_text())
        self.shape = tuple(meta["shape"])
        self._frames: np.memmap | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict:
        # A pickled np.memmap would copy the whole file into the pickle.
        return {**self.__dict__, "_frames": None}

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Frames at store `indices` (any shape S) as a new uint8 array S x 3 x H x W."""
        if self._frames is None:
            self._frames = np.memmap(self.directory / DATA, np.uint8, "r", shape=self.shape)
        return self._frames[indices]
