"""Features of every test tracklet (sharded over ranks, BN-folded model, autocast), scored per protocol."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.distributed as dist
from torch import nn

from datasets.loaders import EvalClips, dense_loader, eval_loader, normalize
from datasets.progress import Progress
from harness.errors import UserError
from harness.evaluate.metrics import Scores, score_test_set
from harness.io import atomic_path
from models.fuse import inference_model

log = logging.getLogger("harness.evaluate")


def autocast(device: torch.device, amp: str):
    """The autocast context for an amp setting ('none', 'bf16', 'fp16') on `device`'s type."""
    if amp == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def shard_bounds(costs: np.ndarray, world: int) -> np.ndarray:
    """world + 1 row boundaries: rank r gets the contiguous rows bounds[r]:bounds[r + 1], about 1/world of the cost."""
    total = np.concatenate([[0], np.cumsum(costs)])
    return np.searchsorted(total, np.arange(world + 1) * total[-1] / world, side="left")


@torch.inference_mode()
def extract_features(model: nn.Module, dataset: EvalClips, batch_size: int = 8, device: str | torch.device = "cpu",
                     num_workers: int = 0, progress: bool = True, compile: bool = False, amp: str = "none",
                     rank: int = 0, world: int = 1) -> np.ndarray:
    """(N, D) float32 features of every tracklet of `dataset`, in row order; dense clips are averaged.

    Runs `inference_model(model)`, the BN-folded copy that `harness.cost` times, so the cost table
    describes the model evaluation runs; `model` itself is left as it was. `batch_size` is clips per
    forward: one per tracklet, or under `dense` clips packed across tracklets. `amp` ('none', 'bf16',
    'fp16') runs the model under autocast; features are float32 either way. With world > 1, every
    rank of the initialised torch.distributed group must call this: rank `rank` extracts its
    contiguous share of the rows (`shard_bounds`) and every rank returns all N features.
    """
    if world > 1 and not dist.is_initialized():
        raise RuntimeError(f"extract_features with world={world} needs an initialised torch.distributed group")
    device, dim = torch.device(device), model.spec.feature_dim
    model = inference_model(model, compile).to(device)
    # Sharded by clips: dense tracklets cost their clip count (1 to 100+ on MARS), the others one forward each.
    bounds = shard_bounds(dataset.clips_per_tracklet(), world)
    rows = range(int(bounds[rank]), int(bounds[rank + 1]))
    make_loader = dense_loader if dataset.dense else eval_loader
    loader = make_loader(dataset, batch_size, num_workers, rows, pin_memory=device.type == "cuda")
    # Clip features summed into their tracklet's row, then divided by its clip count: the mean of its
    # clips under dense, the feature itself otherwise (x + 0 and x / 1 are exact).
    sums = torch.zeros(len(rows), dim, device=device)
    counts = torch.zeros(len(rows), device=device)
    shown = progress and rank == 0
    with Progress(len(loader), "features", "batches") if shown else nullcontext() as bar:
        for clips, _, _, index in loader:
            _accumulate(model, clips, index - rows.start, sums, counts, device, amp)
            if bar is not None:
                bar.update(1)
    features = sums / counts[:, None]
    if world > 1:
        features = _all_gather_rows(features, bounds)
    return features.cpu().numpy()


def _accumulate(model: nn.Module, clips: torch.Tensor, index: torch.Tensor, sums: torch.Tensor,
                counts: torch.Tensor, device: torch.device, amp: str) -> None:
    """Add the features of a batch of uint8 clips into rows `index` of `sums` and one each into `counts`."""
    clips = normalize(clips.to(device, non_blocking=True))
    with autocast(device, amp):
        features = model(clips)
    index = index.to(device)
    sums.index_add_(0, index, features.float())
    counts.index_add_(0, index, torch.ones_like(index, dtype=counts.dtype))


def _all_gather_rows(features: torch.Tensor, bounds: np.ndarray) -> torch.Tensor:
    """Every rank's rows bounds[r]:bounds[r + 1], concatenated in rank order, on every rank."""
    sizes = np.diff(bounds)
    # all_gather needs tensors of one shape (gloo and NCCL alike); NCCL needs them on the GPU, hence `features.device`.
    padded = features.new_zeros(int(sizes.max()), features.shape[1])
    padded[:len(features)] = features
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


def score_features(features: np.ndarray, rows: pl.DataFrame, protocols: list[str], metric: str = "cosine",
                   device: str | None = None) -> dict[str, Scores]:
    """Scores for each protocol of test-set `features` whose rows (pid, camera, is_query) are `rows`."""
    query_index = np.flatnonzero(rows["is_query"].to_numpy())
    return {
        # writable: torch warns on (and cannot safely wrap) polars' read-only views.
        protocol: score_test_set(features, rows["pid"].to_numpy(writable=True),
                                 rows["camera"].to_numpy(writable=True), query_index,
                                 protocol=protocol, metric=metric, device=device)
        for protocol in protocols
    }


def save_features(directory: Path, features: np.ndarray, rows: pl.DataFrame) -> None:
    """Write features.npy and index.parquet (pid, camera, tracklet, is_query per row) to `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / "features.npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, features)
    with atomic_path(directory / "index.parquet") as tmp:
        rows.select("pid", "camera", "tracklet", "is_query").write_parquet(tmp)


def load_features(directory: Path) -> tuple[np.ndarray, pl.DataFrame]:
    """Features and their index written by `save_features`."""
    paths = directory / "features.npy", directory / "index.parquet"
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise UserError(f"saved features incomplete: {', '.join(missing)} missing; save them with "
                        f"`python -m harness.evaluate --checkpoint ... --save-features {directory}`")
    features, rows = np.load(paths[0]), pl.read_parquet(paths[1])
    if len(features) != rows.height:
        raise UserError(f"{paths[0]} holds {len(features)} features but {paths[1]} indexes {rows.height} rows; "
                        f"save them again")
    return features, rows
