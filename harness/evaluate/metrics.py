"""Re-ID ranking scores: CMC, mAP and mINP under a named protocol.

Every rate is a fraction in [0, 1] (reports multiply by 100). Distances are float32:
cosine (1 - cosine similarity, i.e. on L2-normalised features) or Euclidean.

Protocols (issue 4):
- ``mars-official``: MARS-evaluation (github.com/liangzheng06/MARS-evaluation,
  utils/evaluation_mars.m + utils/compute_AP.m; STE-NVAN's cmc.py is a port of it).
  Gallery = the whole test set, queries included. For a query, good = same pid and other
  camera; junk = pid -1, or same pid and same camera (the query itself among them). Junk is
  removed from the ranking; AP is the trapezoid rule of compute_AP.m; CMC counts ranks
  after junk removal. Deviations, both outside what the official code defines:
  a query with no good match is skipped (compute_AP.m divides 0 by 0 there, NaN in
  MATLAB, ZeroDivisionError in STE-NVAN's port; no MARS or DukeV query has none), and a
  query with pid -1 is rejected. STE-NVAN's port also cuts every ranking at 10,000
  entries; like MARS-evaluation we rank the whole gallery.
- ``standard`` (Market-1501 style): gallery = test set minus the queries and minus pid -1;
  same pid and same camera removed; queries with no good match skipped; AP = mean of the
  precision at each hit.
mINP (Ye et al., TPAMI 2021): mean over queries of (number of good matches) / (rank of
the hardest good match), ranks counted after junk removal, under either protocol.

Pid 0 (MARS distractors) is an ordinary label, as in the official code. Both protocols
drop pid -1 from the gallery up front: it is junk for every query, so it never changes a
rank after junk removal. Ties in distance are broken by gallery index, as a stable sort
would.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from harness.errors import MetricsError
from harness.evaluate import arrays
from harness.evaluate.arrays import ArrayLike

PROTOCOLS = ("mars-official", "standard")
METRICS = ("cosine", "euclidean")
JUNK_PID = -1
REPORTED_RANKS = (1, 5, 10, 20)
# Queries x gallery items ranked at once (~24 bytes each): bounds memory for any gallery size.
# Large chunks pay: each chunk alternates BLAS and torch thread pools (measured on 2 cores).
CHUNK_ELEMENTS = 1 << 23

_NO_GOOD = torch.iinfo(torch.int64).max


@dataclass(frozen=True, eq=False)
class QueryOutcomes:
    """What every score of one protocol is a mean of, per query in query order (arrays of the query count).

    Ranks are 1-based after junk removal; a query without a good match has first_rank = last_rank = 0,
    matches = 0 and ap = NaN, and counts in no score. rank-k = mean of (first_rank <= k), mAP = mean of
    ap, mINP = mean of matches / last_rank, each over the queries with a match.
    """

    first_rank: np.ndarray  # int64: rank of the first good match
    last_rank: np.ndarray  # int64: rank of the last (hardest) good match
    matches: np.ndarray  # int64: good matches in the gallery
    ap: np.ndarray  # float64: average precision under the protocol's rule

    @property
    def valid(self) -> np.ndarray:
        """Bool per query: it has a good match, so it counts in the scores."""
        return self.matches > 0


@dataclass(frozen=True, eq=False)
class Scores:
    """Scores of one protocol; rates are fractions in [0, 1], averaged over num_queries valid queries."""

    protocol: str
    cmc: np.ndarray  # read-only; cmc[r - 1] = fraction of queries with a good match in the top r
    rank1: float
    rank5: float
    rank10: float
    rank20: float
    map: float
    minp: float
    num_queries: int
    outcomes: QueryOutcomes  # per query: what the scores are means of

    def as_dict(self) -> dict[str, float]:
        """Plain floats for MLflow and JSON: rank1/5/10/20, map, minp (fractions) and num_queries."""
        names = ("rank1", "rank5", "rank10", "rank20", "map", "minp", "num_queries")
        return {name: float(getattr(self, name)) for name in names}


def exact_mean(values: np.ndarray) -> float:
    """The mean of float64 `values` from their correctly rounded sum (math.fsum): the same in any order."""
    return math.fsum(values.tolist()) / len(values)


def exact_means(values: np.ndarray) -> np.ndarray:
    """`exact_mean` of each row of float64 `values` (..., N), value for value.

    A row of whole numbers (hit@k's 0/1) is summed by numpy: every partial sum of whole numbers under 2**53 is exact,
    so its sum is the correctly rounded one in any order, and fsum's Python loop is kept for the other rows."""
    values = np.asarray(values, dtype=np.float64)
    rows = values.reshape(-1, values.shape[-1])
    out = np.empty(rows.shape[0])
    whole = np.all(rows == np.trunc(rows), axis=1) & (np.abs(rows).sum(axis=1) < 2.0**53)
    out[whole] = rows[whole].sum(axis=1) / rows.shape[1]
    for i in np.flatnonzero(~whole):
        out[i] = exact_mean(rows[i])
    return out.reshape(values.shape[:-1])


def scores_from_outcomes(protocol: str, outcomes: QueryOutcomes, max_rank: int = 50) -> Scores:
    """CMC, rank-k, mAP and mINP as plain means of the per-query outcomes over the queries with a match."""
    valid = outcomes.valid
    n = int(valid.sum())
    if n == 0:
        raise MetricsError(
            "No query has a good match (same pid, other camera) in the gallery, so CMC and mAP are undefined. "
            "Check that query and gallery pids and cameras come from the same test set.")
    first = outcomes.first_rank[valid]
    cmc = np.cumsum(np.bincount(np.minimum(first, max_rank + 1) - 1, minlength=max_rank + 1)[:max_rank]) / n
    cmc.setflags(write=False)
    return Scores(
        protocol=protocol, cmc=cmc, **{f"rank{r}": float(cmc[r - 1]) for r in REPORTED_RANKS},
        map=exact_mean(outcomes.ap[valid]),
        minp=exact_mean(outcomes.matches[valid] / outcomes.last_rank[valid]),
        num_queries=n, outcomes=outcomes,
    )


def distance_matrix(
    query_features: ArrayLike,
    gallery_features: ArrayLike,
    *,
    metric: str = "cosine",
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Float32 (queries, gallery) distance matrix: cosine (1 - cos, in [0, 2]) or Euclidean (feature units)."""
    device = _device(device)
    arrays.check_choice("metric", metric, METRICS)
    query = arrays.finite_tensor("query_features", query_features, 2).to(device)
    gallery = arrays.finite_tensor("gallery_features", gallery_features, 2).to(device)
    arrays.check_same_dim(query, gallery)
    return _feature_rows(query, gallery.clone(), metric)(0, len(query))


def score(
    query_features: ArrayLike | None,
    gallery_features: ArrayLike | None,
    *,
    query_pids: ArrayLike,
    query_cams: ArrayLike,
    gallery_pids: ArrayLike,
    gallery_cams: ArrayLike,
    distances: ArrayLike | None = None,
    protocol: str = "mars-official",
    metric: str = "cosine",
    max_rank: int = 50,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
) -> Scores:
    """Scores of queries against a gallery, from features or a (queries, gallery) distance matrix.

    The gallery is taken as given (only pid -1 is dropped), so the protocols differ here only
    in AP; `score_test_set` also builds the protocol's gallery. Distances are ranked in
    float32; chunk_size is the number of queries ranked at once (memory ~ 24 bytes x
    chunk_size x gallery size; default: CHUNK_ELEMENTS / gallery size); cmc has max_rank entries.
    """
    device = _device(device)
    _check_options(protocol, metric, max_rank, chunk_size)
    if (distances is None) == (query_features is None or gallery_features is None):
        raise MetricsError(
            "score() needs either query_features and gallery_features, or distances= "
            f"(got query_features {arrays.describe(query_features)}, gallery_features "
            f"{arrays.describe(gallery_features)}, distances {arrays.describe(distances)}). "
            "Pass the two feature matrices, or pass None for both and give distances."
        )
    if distances is None:
        query = arrays.finite_tensor("query_features", query_features, 2).to(device)
        gallery = arrays.finite_tensor("gallery_features", gallery_features, 2).to(device)
        arrays.check_same_dim(query, gallery)
        shape = (len(query), len(gallery))
    else:
        matrix = arrays.finite_tensor("distances", distances, 2)
        shape = tuple(matrix.shape)
    qp = arrays.label_tensor("query_pids", query_pids, shape[0], "query rows", device)
    qc = arrays.label_tensor("query_cams", query_cams, shape[0], "query rows", device)
    gp = arrays.label_tensor("gallery_pids", gallery_pids, shape[1], "gallery rows", device)
    gc = arrays.label_tensor("gallery_cams", gallery_cams, shape[1], "gallery rows", device)
    keep = torch.nonzero(gp != JUNK_PID).squeeze(1)
    if distances is None:
        rows = _feature_rows(query, gallery.index_select(0, keep), metric)
    else:
        rows = _matrix_rows(matrix, keep.to(matrix.device), device)
    return _score(rows, qp, qc, gp[keep], gc[keep], protocol, max_rank, chunk_size)


def score_test_set(
    features: ArrayLike,
    pids: ArrayLike,
    cams: ArrayLike,
    query_index: ArrayLike,
    *,
    protocol: str = "mars-official",
    metric: str = "cosine",
    max_rank: int = 50,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
) -> Scores:
    """Scores of a MARS/DukeV-style test set whose queries are rows query_index (0-based) of it.

    mars-official ranks each query against the whole test set (pid -1 rows as junk);
    standard against the test set minus the query rows and minus pid -1.
    """
    device = _device(device)
    _check_options(protocol, metric, max_rank, chunk_size)
    feats = arrays.finite_tensor("features", features, 2).to(device)
    pid = arrays.label_tensor("pids", pids, len(feats), "feature rows", device)
    cam = arrays.label_tensor("cams", cams, len(feats), "feature rows", device)
    queries = arrays.query_index(query_index, len(feats), device)
    in_gallery = pid != JUNK_PID
    if protocol == "standard":
        in_gallery[queries] = False
    keep = torch.nonzero(in_gallery).squeeze(1)
    rows = _feature_rows(feats[queries], feats.index_select(0, keep), metric)
    return _score(rows, pid[queries], cam[queries], pid[keep], cam[keep], protocol, max_rank, chunk_size)


def _score(
    rows: Callable[[int, int], torch.Tensor],
    query_pids: torch.Tensor,
    query_cams: torch.Tensor,
    gallery_pids: torch.Tensor,
    gallery_cams: torch.Tensor,
    protocol: str,
    max_rank: int,
    chunk_size: int | None,
) -> Scores:
    if not len(query_pids):
        raise MetricsError("There are no queries (query_pids is empty); give at least one query row.")
    junk_queries = torch.nonzero(query_pids == JUNK_PID).squeeze(1)
    if len(junk_queries):
        raise MetricsError(
            f"query_pids has pid {JUNK_PID} (junk) at query rows {junk_queries[:10].tolist()}; "
            "a junk tracklet has no identity to match. Queries must be labelled identities: "
            "drop those rows from the queries."
        )
    if not len(gallery_pids):
        raise MetricsError(
            f"The gallery is empty once pid {JUNK_PID} (junk) is dropped; there is nothing to "
            "rank the queries against. Check the gallery pids."
        )
    blocks = _identity_blocks(gallery_pids)
    chunk_size = chunk_size or max(1, CHUNK_ELEMENTS // len(gallery_pids))
    parts = []
    with torch.no_grad():
        for start in range(0, len(query_pids), chunk_size):
            stop = min(start + chunk_size, len(query_pids))
            ranks, num_good = _good_ranks(
                rows(start, stop), query_pids[start:stop], query_cams[start:stop], gallery_cams, blocks
            )
            some = num_good > 0
            last = ranks.gather(1, (num_good - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
            ap = torch.full(num_good.shape, math.nan, dtype=torch.float64, device=num_good.device)
            if some.any():
                ap[some] = _average_precision(ranks[some], num_good[some], protocol)
            parts.append([torch.where(some, ranks[:, 0], 0), torch.where(some, last, 0), num_good, ap])
    first, last, matches, ap = (torch.cat(column).cpu().numpy() for column in zip(*parts))
    outcomes = QueryOutcomes(first.astype(np.int64), last.astype(np.int64), matches.astype(np.int64),
                             ap.astype(np.float64))
    return scores_from_outcomes(protocol, outcomes, max_rank)


def _identity_blocks(gallery_pids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Gallery indices grouped by pid: (order, pids, start of each pid in order, count)."""
    order = torch.argsort(gallery_pids, stable=True)
    pids, counts = torch.unique_consecutive(gallery_pids[order], return_counts=True)
    starts = counts.cumsum(0) - counts
    return order, pids, starts, counts


def _good_ranks(
    distances: torch.Tensor,
    query_pids: torch.Tensor,
    query_cams: torch.Tensor,
    gallery_cams: torch.Tensor,
    blocks: tuple[torch.Tensor, ...],
) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based ranks (chunk, m) of each query's good matches among its non-junk gallery items, and their count.

    A query's scores depend only on these ranks, so rather than sorting each row (g log g)
    we sort the query's few same-pid items and bucket every gallery item between its good
    matches with a binary search (g log m); a cumulative count of non-junk items per bucket
    is then the rank of each good match. Overwrites distances.
    """
    order, pids, starts, counts = blocks
    chunk, size = distances.shape
    keys = _sort_keys(distances)
    block = torch.searchsorted(pids, query_pids).clamp(max=len(pids) - 1)
    length = torch.where(pids[block] == query_pids, counts[block], 0)
    slot = torch.arange(max(int(length.max()), 1), device=keys.device)
    member = slot < length.unsqueeze(1)
    items = order[(starts[block].unsqueeze(1) + slot).clamp(max=size - 1)]
    same_cam = gallery_cams[items] == query_cams.unsqueeze(1)
    good, junk = member & ~same_cam, member & same_cam
    item_keys = keys.gather(1, items)
    good_keys = torch.where(good, item_keys, _NO_GOOD).sort(dim=1).values
    per_bucket = torch.zeros(chunk, len(slot) + 1, dtype=torch.int64, device=keys.device)
    ones = torch.ones((), dtype=torch.int64, device=keys.device).expand_as(keys)
    per_bucket.scatter_add_(1, torch.searchsorted(good_keys, keys), ones)
    per_bucket.scatter_add_(1, torch.searchsorted(good_keys, item_keys), -junk.long())
    return per_bucket.cumsum(1)[:, : len(slot)], good.sum(1)


def _sort_keys(distances: torch.Tensor) -> torch.Tensor:
    """Int64 keys in (float32 distance, gallery index) order, so ties go by index; overwrites distances."""
    # Adding 0.0 turns -0.0 into +0.0, which the float order treats as equal.
    bits = distances.add_(0.0).view(torch.int32)
    # Little-endian int32 pairs viewed as int64: high word = distance bits with the magnitude
    # flipped for negative floats (so int order = float order), low word = gallery index.
    keys = torch.empty(*bits.shape, 2, dtype=torch.int32, device=bits.device)
    keys[..., 0] = torch.arange(bits.shape[1], dtype=torch.int32, device=bits.device)
    keys[..., 1] = bits.bitwise_xor_((bits >> 31).bitwise_and_(0x7FFFFFFF))
    return keys.view(torch.int64).squeeze(-1)


def _average_precision(ranks: torch.Tensor, num_good: torch.Tensor, protocol: str) -> torch.Tensor:
    """Per-query AP from the ranks of its good matches: trapezoid (mars-official) or precision at hits."""
    hits = torch.arange(1, ranks.shape[1] + 1, dtype=torch.float64, device=ranks.device)
    is_hit = hits <= num_good.unsqueeze(1)
    rank = ranks.double().clamp(min=1)
    precision = hits / rank
    if protocol == "mars-official":
        # compute_AP.m: recall moves only at hits; the precision before hit i at rank k is
        # (i - 1) / (k - 1), or its starting value 1 at the top of the list.
        before = torch.where(rank > 1, (hits - 1) / (rank - 1).clamp(min=1), 1.0)
        precision = (before + precision) / 2
    return torch.where(is_hit, precision, 0.0).sum(1) / num_good.double()


def _feature_rows(query: torch.Tensor, gallery: torch.Tensor, metric: str) -> Callable[[int, int], torch.Tensor]:
    """Distance rows of queries start:stop; takes ownership of gallery (normalised in place for cosine)."""
    if metric == "cosine":
        gallery = _normalize_(gallery)
    else:
        gallery_squares = (gallery * gallery).sum(1)

    def rows(start: int, stop: int) -> torch.Tensor:
        chunk = query[start:stop]
        if metric == "cosine":
            return _inner(_normalize_(chunk.clone()), gallery).neg_().add_(1)
        squared = _inner(chunk, gallery).mul_(-2).add_(gallery_squares).add_((chunk * chunk).sum(1, keepdim=True))
        return squared.clamp_(min=0).sqrt_()

    return rows


def _inner(query: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """Float32 inner products (queries, gallery)."""
    if query.device.type == "cpu":
        # numpy's OpenBLAS runs this GEMM ~1.5x faster than torch's MKL on AMD EPYC (measured).
        return torch.from_numpy(query.numpy() @ gallery.numpy().T)
    return query @ gallery.T


def _matrix_rows(
    matrix: torch.Tensor, columns: torch.Tensor, device: torch.device
) -> Callable[[int, int], torch.Tensor]:
    def rows(start: int, stop: int) -> torch.Tensor:
        return matrix[start:stop].index_select(1, columns).to(device)  # a copy: _good_ranks overwrites it

    return rows


def _normalize_(features: torch.Tensor) -> torch.Tensor:
    """L2-normalise rows in place (as F.normalize: a zero row stays zero)."""
    return features.div_(torch.linalg.vector_norm(features, dim=1, keepdim=True).clamp_(min=1e-12))


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _check_options(protocol: str, metric: str, max_rank: int, chunk_size: int | None) -> None:
    arrays.check_choice("protocol", protocol, PROTOCOLS)
    arrays.check_choice("metric", metric, METRICS)
    checks = [("max_rank", max_rank, max(REPORTED_RANKS))] + [("chunk_size", chunk_size, 1)] * (chunk_size is not None)
    for name, value, least in checks:
        if not isinstance(value, int | np.integer) or value < least:
            raise MetricsError(f"{name} must be an integer >= {least}, got {value!r}.")
