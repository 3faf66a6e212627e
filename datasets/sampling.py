"""Frame samplers (which frames of a tracklet form a clip) and the P x K identity batch sampler."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial

import numpy as np
from torch.utils.data import Sampler

from datasets.errors import DatasetError

# (num_frames, T, rng) -> frame indices; rng may be None for the deterministic samplers.
FrameSampler = Callable[[int, int, "np.random.Generator | None"], np.ndarray]


def _chunk_bounds(num_frames: int, frames: int) -> np.ndarray:
    """T + 1 boundaries splitting [0, num_frames) into T near-equal chunks (num_frames >= T)."""
    return np.arange(frames + 1) * num_frames // frames


def _pad(indices: np.ndarray, frames: int) -> np.ndarray:
    """`indices` followed by copies of its last element up to `frames` entries."""
    return np.concatenate([indices, np.full(frames - len(indices), indices[-1])])


def chunk_random(num_frames: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """T frame indices, one uniformly random frame of each of T equal chunks (the paper's training sampler)."""
    if num_frames < frames:
        return _pad(np.arange(num_frames), frames)
    bounds = _chunk_bounds(num_frames, frames)
    return rng.integers(bounds[:-1], bounds[1:])


def chunk_first(num_frames: int, frames: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """T frame indices, the first frame of each of T equal chunks (the paper's test sampler)."""
    if num_frames < frames:
        return _pad(np.arange(num_frames), frames)
    return _chunk_bounds(num_frames, frames)[:-1]


def evenly(num_frames: int, frames: int, rng: np.random.Generator | None = None, stride: int = 1) -> np.ndarray:
    """T frame indices `stride` frames apart, from frame 0 or, given `rng`, from a random start that fits."""
    span = (frames - 1) * stride + 1
    start = int(rng.integers(0, num_frames - span + 1)) if rng is not None and num_frames > span else 0
    return np.minimum(start + np.arange(frames) * stride, num_frames - 1)


def dense(num_frames: int, frames: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """All consecutive non-overlapping clips, ceil(num_frames / T) x T indices (all-frames evaluation)."""
    clips = -(-num_frames // frames)
    return np.minimum(np.arange(clips * frames), num_frames - 1).reshape(clips, frames)


SAMPLERS = {"chunk_random": chunk_random, "chunk_first": chunk_first, "evenly": evenly, "dense": dense}


def frame_sampler(name: str, stride: int = 1) -> FrameSampler:
    """The frame sampler called `name` (stride only applies to `evenly`)."""
    if name not in SAMPLERS:
        raise DatasetError(f"unknown frame sampler {name!r}; use one of {sorted(SAMPLERS)}.")
    if stride < 1:
        raise DatasetError(f"frame sampler stride must be >= 1 frame, got {stride}.")
    return partial(evenly, stride=stride) if name == "evenly" else SAMPLERS[name]


class PKSampler(Sampler[list[int]]):
    """Batches of P identities x K tracklets, optionally split across data-parallel ranks.

    An epoch follows the usual RandomIdentitySampler: each identity's tracklets are shuffled into
    groups of K (an identity with fewer than K draws K with replacement; a remainder is dropped),
    then each step takes P x num_replicas distinct identities that still have groups and one group
    of each. Rank r gets the r-th block of P identities, so ranks see distinct identities in the
    same step and all ranks get the same number of steps. The plan depends only on seed and epoch.
    """

    def __init__(
        self, labels: Sequence[int], p: int, k: int, seed: int = 0, num_replicas: int = 1, rank: int = 0,
    ) -> None:
        self.labels = np.asarray(labels)
        self.p, self.k, self.seed = p, k, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        identities = len(np.unique(self.labels))
        if p < 1 or k < 1 or not 0 <= rank < num_replicas:
            raise DatasetError(f"PKSampler needs P >= 1, K >= 1 and 0 <= rank < num_replicas; got P={p}, K={k}, "
                               f"rank={rank}, num_replicas={num_replicas}.")
        if identities < p * num_replicas:
            raise DatasetError(
                f"PKSampler needs at least P x num_replicas = {p} x {num_replicas} identities per step but the "
                f"training split has {identities}; lower P or the number of workers."
            )
        self._plans: dict[int, list[list[int]]] = {}

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose plan the next iteration follows (as DistributedSampler.set_epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self._plan())

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._plan())

    def _plan(self) -> list[list[int]]:
        """This rank's batches of the current epoch (computed once per epoch)."""
        if self.epoch not in self._plans:
            rng = np.random.default_rng([self.seed, self.epoch])
            groups: dict[int, list[np.ndarray]] = {}
            for label in np.unique(self.labels):
                members = rng.permutation(np.flatnonzero(self.labels == label))
                if len(members) < self.k:
                    members = rng.choice(members, self.k, replace=True)
                groups[int(label)] = [members[i:i + self.k] for i in range(0, len(members) - self.k + 1, self.k)]
            per_step = self.p * self.num_replicas
            batches = []
            while len(groups) >= per_step:
                chosen = rng.choice(sorted(groups), per_step, replace=False)
                mine = chosen[self.rank * self.p:(self.rank + 1) * self.p]
                batches.append([int(i) for label in mine for i in groups[int(label)][-1]])
                for label in chosen:
                    groups[int(label)].pop()
                    if not groups[int(label)]:
                        del groups[int(label)]
            self._plans = {self.epoch: batches}
        return self._plans[self.epoch]
