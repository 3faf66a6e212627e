"""Frame samplers (which frames of a tracklet form a clip) and the P x K identity batch sampler."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial

import numpy as np
from torch.utils.data import Sampler

from datasets.errors import DatasetError

# (num_frames, T, rng) -> frame indices; rng may be None for the deterministic samplers.
FrameSampler = Callable[[int, int, "np.random.Generator | None"], np.ndarray]


def _interval(num_frames: int, frames: int) -> int:
    """Frames per chunk in the authors' rule: ceil(F / S) (1 when the tracklet is shorter than the clip)."""
    return -(-num_frames // frames)


def chunk_random(num_frames: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """T frame indices, a uniformly random member of each of T chunks (the STE-NVAN authors' training sampler).

    The authors' rule (util/utils.py, Video_train_Dataset): interval = ceil(F / T); the frames
    are padded with copies of the last frame to interval * T; chunk s is
    frames[s * interval : (s + 1) * interval], padding copies included in the draw.
    """
    interval = _interval(num_frames, frames)
    drawn = np.arange(frames) * interval + rng.integers(0, interval, frames)
    return np.minimum(drawn, num_frames - 1)


def chunk_first(num_frames: int, frames: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """T frame indices, the first frame of each of T chunks of the authors' rule (their test sampler)."""
    return np.minimum(np.arange(frames) * _interval(num_frames, frames), num_frames - 1)


def _segment_bounds(num_frames: int, frames: int) -> np.ndarray:
    """T + 1 boundaries splitting [0, num_frames) into T segments whose sizes differ by at most one."""
    return np.arange(frames + 1) * num_frames // frames


def _pad(indices: np.ndarray, frames: int) -> np.ndarray:
    """`indices` followed by copies of its last element up to `frames` entries."""
    return np.concatenate([indices, np.full(frames - len(indices), indices[-1])])


def segment_random(num_frames: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """T frame indices, one uniformly random frame of each of T near-equal segments (TSN-style; never pads when F >= T)."""
    if num_frames < frames:
        return _pad(np.arange(num_frames), frames)
    bounds = _segment_bounds(num_frames, frames)
    return rng.integers(bounds[:-1], bounds[1:])


def segment_first(num_frames: int, frames: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """T frame indices, the first frame of each of T near-equal segments."""
    if num_frames < frames:
        return _pad(np.arange(num_frames), frames)
    return _segment_bounds(num_frames, frames)[:-1]


def evenly(num_frames: int, frames: int, rng: np.random.Generator | None = None, stride: int = 1) -> np.ndarray:
    """T frame indices `stride` frames apart, from frame 0 or, given `rng`, from a random start that fits."""
    span = (frames - 1) * stride + 1
    start = int(rng.integers(0, num_frames - span + 1)) if rng is not None and num_frames > span else 0
    return np.minimum(start + np.arange(frames) * stride, num_frames - 1)


def dense(num_frames: int, frames: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """All consecutive non-overlapping clips, ceil(num_frames / T) x T indices (all-frames evaluation)."""
    clips = -(-num_frames // frames)
    return np.minimum(np.arange(clips * frames), num_frames - 1).reshape(clips, frames)


SAMPLERS = {"chunk_random": chunk_random, "chunk_first": chunk_first, "segment_random": segment_random,
            "segment_first": segment_first, "evenly": evenly, "dense": dense}


def frame_sampler(name: str, stride: int = 1) -> FrameSampler:
    """The frame sampler called `name` (stride only applies to `evenly`)."""
    if name not in SAMPLERS:
        raise DatasetError(f"unknown frame sampler {name!r}; use one of {sorted(SAMPLERS)}.")
    if stride < 1:
        raise DatasetError(f"frame sampler stride must be >= 1 frame, got {stride}.")
    return partial(evenly, stride=stride) if name == "evenly" else SAMPLERS[name]


EPOCH_MODES = ("identities", "tracklets")
Draw = tuple[int, int, int]  # (tracklet row, epoch, draw number unique within the epoch)


class PKSampler(Sampler[list[Draw]]):
    """Batches of P identities x K tracklet draws, split across data-parallel ranks.

    `p` is the identities of a whole step over all ranks; rank r gets the r-th block of
    p / num_replicas of them, so the ranks together see exactly the batch one process would,
    whatever the number of replicas. Each item is (tracklet, epoch, draw): the draw number is the
    item's position in the epoch's global plan, so a tracklet drawn twice gets its own frames and
    flip. The epoch travels with the item because persistent loader workers keep their own copy of
    the dataset, which a `set_epoch` in the main process never reaches. The plan depends only on
    seed and epoch.

    - `mode="identities"` (the STE-NVAN authors' epoch, util/utils.py Get_Video_train_DataLoader):
      one pass over the identities, shuffled, p per step with the remainder dropped; each identity
      draws K of its tracklets with replacement. MARS: 625 // 8 = 78 steps.
    - `mode="tracklets"` (torchreid's RandomIdentitySampler): each identity's tracklets are
      shuffled into groups of K (fewer than K are drawn with replacement; a remainder is dropped),
      and each step takes p identities that still have groups, one group each, until fewer than p
      are left. Identities with many tracklets come back in many steps.
    """

    def __init__(
        self, labels: Sequence[int], p: int, k: int, seed: int = 0, num_replicas: int = 1, rank: int = 0,
        mode: str = "identities",
    ) -> None:
        self.labels = np.asarray(labels)
        self.p, self.k, self.seed = p, k, seed
        self.num_replicas, self.rank, self.mode = num_replicas, rank, mode
        self.epoch = 0
        identities = len(np.unique(self.labels))
        if mode not in EPOCH_MODES:
            raise DatasetError(f"PKSampler mode {mode!r} is unknown; use one of {list(EPOCH_MODES)}.")
        if p < 1 or k < 1 or not 0 <= rank < num_replicas or p % num_replicas:
            raise DatasetError(f"PKSampler needs P >= 1 divisible by num_replicas, K >= 1 and 0 <= rank < "
                               f"num_replicas; got P={p}, K={k}, rank={rank}, num_replicas={num_replicas}.")
        if identities < p:
            raise DatasetError(
                f"PKSampler needs at least P = {p} identities per step but the training split has {identities}; "
                f"lower P (train.batch_size / train.k)."
            )
        self._plans: dict[int, list[list[Draw]]] = {}

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose plan the next iteration follows (as DistributedSampler.set_epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self._plan())

    def __iter__(self) -> Iterator[list[Draw]]:
        return iter(self._plan())

    def global_steps(self) -> list[np.ndarray]:
        """Every step's tracklets (p x K, identity by identity) over all ranks, for the current epoch."""
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.mode == "identities":
            members = {label: np.flatnonzero(self.labels == label) for label in np.unique(self.labels)}
            order = rng.permutation(sorted(members))
            return [np.concatenate([rng.choice(members[label], self.k, replace=True)
                                    for label in order[s * self.p:(s + 1) * self.p]])
                    for s in range(len(order) // self.p)]
        groups: dict[int, list[np.ndarray]] = {}
        for label in np.unique(self.labels):
            members = rng.permutation(np.flatnonzero(self.labels == label))
            if len(members) < self.k:
                members = rng.choice(members, self.k, replace=True)
            groups[int(label)] = [members[i:i + self.k] for i in range(0, len(members) - self.k + 1, self.k)]
        steps = []
        while len(groups) >= self.p:
            chosen = rng.choice(sorted(groups), self.p, replace=False)
            steps.append(np.concatenate([groups[int(label)].pop() for label in chosen]))
            for label in chosen:
                if not groups[int(label)]:
                    del groups[int(label)]
        return steps

    def _plan(self) -> list[list[Draw]]:
        """This rank's batches of the current epoch (computed once per epoch)."""
        if self.epoch not in self._plans:
            size = self.p * self.k // self.num_replicas
            mine = slice(self.rank * size, (self.rank + 1) * size)
            batches = []
            for step, tracklets in enumerate(self.global_steps()):
                draws = step * self.p * self.k + np.arange(self.p * self.k)
                batches.append([(int(t), self.epoch, int(d)) for t, d in zip(tracklets[mine], draws[mine])])
            self._plans = {self.epoch: batches}
        return self._plans[self.epoch]
