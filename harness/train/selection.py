"""Which evaluation a run reports: evaluating the model on every rank, the evaluation chosen so far (eval.select)
and the score Ray keeps checkpoints by."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from datasets.loaders import EvalClips
from harness.config import EvalConfig
from harness.evaluate.features import extract_features, score_features
from harness.evaluate.metrics import QueryOutcomes

# Ray ranks kept checkpoints by checkpoint_score and stores it as JSON, where -inf becomes null and
# breaks a restore: epochs without an evaluation score a finite value below any accuracy instead.
NOT_EVALUATED = -1.0
CMC_RANKS = 50  # CMC entries kept with the best scores (the full curve is gallery-long)


@dataclass
class Best:
    """The evaluation chosen so far (eval.select: the latest, or the best on the test set): epoch, the
    eval.select_by metric's value, every protocol's scores, CMC and per-query outcomes (plain lists, so checkpoints
    stay plain data)."""

    epoch: int = -1
    value: float = NOT_EVALUATED
    scores: dict[str, dict[str, float]] | None = None
    cmc: dict[str, list[float]] | None = None  # per protocol, ranks 1..CMC_RANKS
    queries: dict[str, dict[str, list]] | None = None  # per protocol, QueryOutcomes' fields as lists

    def outcomes(self) -> dict[str, QueryOutcomes]:
        """The per-query outcomes of the chosen evaluation, per protocol."""
        return {p: QueryOutcomes(**{k: np.asarray(v) for k, v in q.items()}) for p, q in (self.queries or {}).items()}


def choose(eval_config: EvalConfig, best: Best, new: Best) -> Best:
    """The evaluation a run reports after `new`: under eval.select last the newest, under test the better by
    eval.select_by, ties to the later epoch (as the authors' `cmc >= best_cmc`, train_NL.py)."""
    return new if eval_config.select == "last" or new.value >= best.value else best


def checkpoint_score(eval_config: EvalConfig, epoch: int, metrics: dict[str, Any]) -> float:
    """The score Ray keeps train.keep_checkpoints checkpoints by (the highest): the epoch under eval.select last, so
    the newest are kept; the eval.select_by metric under test (NOT_EVALUATED at epochs without an evaluation)."""
    if eval_config.select == "last":
        return float(epoch)
    return metrics.get(eval_config.select_by, NOT_EVALUATED)


def evaluate_model(model: nn.Module, dataset: EvalClips, eval_config: EvalConfig, device: torch.device, *,
                   amp: bool = False, workers: int = 0, rank: int = 0, world: int = 1) -> tuple[dict, dict, dict] | None:
    """Metrics dict for reporting (primary protocol unprefixed, every protocol prefixed), the CMCs and the
    per-query outcomes as lists, on rank 0 (None on the others).

    Every rank must call it: each extracts the features of its slice of the test set with its own
    `workers` loader processes, under train.amp's autocast (`amp`), and the slices are gathered for rank 0 to score.
    """
    broadcast_buffers(model, world)
    features = extract_features(model, dataset, eval_config.batch_size, str(device), workers, progress=False,
                                compile=eval_config.compile, amp=amp, rank=rank, world=world)
    if rank != 0:
        return None
    scores = score_features(features, dataset.rows, eval_config.protocols, eval_config.metric)
    primary = eval_config.primary
    metrics = dict(scores[primary].as_dict())
    for name, s in scores.items():
        metrics |= {f"{name}.{k}": v for k, v in s.as_dict().items()}
    queries = {name: {k: getattr(s.outcomes, k).tolist() for k in ("first_rank", "last_rank", "matches", "ap")}
               for name, s in scores.items()}
    return metrics, {name: s.cmc[:CMC_RANKS].tolist() for name, s in scores.items()}, queries


def broadcast_buffers(model: nn.Module, world: int) -> None:
    """Give every rank rank 0's buffers (BN running statistics).

    Without SyncBN each rank's statistics moved with its own last batches, so ranks extracting
    their slices with their own would describe one test set with several models.
    """
    if world == 1:
        return
    import torch.distributed as dist

    for buffer in model.buffers():
        dist.broadcast(buffer, 0)
