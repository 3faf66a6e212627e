"""harness.metrics against a slow reference written from the definitions, hand-worked examples and bad input."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from harness.errors import MetricsError
from harness.evaluate.metrics import Scores, distance_matrix, exact_mean, exact_means, score, score_test_set

PROTOCOLS = ("mars-official", "standard")


def compute_ap_mars(good, junk, order):
    """Line-by-line port of MARS-evaluation utils/compute_AP.m: (ap, cmc over the given order)."""
    cmc = [0] * len(order)
    old_recall, old_precision, ap = 0.0, 1.0, 0.0
    intersect_size = j = good_now = njunk = 0
    for n, item in enumerate(order):
        flag = False
        if item in good:
            cmc[n - njunk :] = [1] * (len(order) - n + njunk)
            flag = True
            good_now += 1
        if item in junk:
            njunk += 1
            continue
        if flag:
            intersect_size += 1
        recall = intersect_size / len(good)
        precision = intersect_size / (j + 1)
        ap += (recall - old_recall) * (old_precision + precision) / 2
        old_recall, old_precision = recall, precision
        j += 1
        if good_now == len(good):
            break
    return ap, cmc


def reference_scores(dist, qp, qc, gp, gc, protocol, max_rank=50):
    """Per-query loops: (cmc, mAP, mINP, number of queries with a good match)."""
    cmcs, aps, inps = [], [], []
    for i in range(len(qp)):
        order = sorted(range(len(gp)), key=lambda j: (float(dist[i][j]), j))
        good = {j for j in order if gp[j] == qp[i] and gc[j] != qc[i] and gp[j] != -1}
        junk = {j for j in order if gp[j] == -1 or (gp[j] == qp[i] and gc[j] == qc[i])}
        if not good:
            continue
        kept = [j for j in order if j not in junk]
        hit_ranks = [rank for rank, j in enumerate(kept, start=1) if j in good]
        if protocol == "mars-official":
            ap, cmc = compute_ap_mars(good, junk, order)
            cmc = (cmc + [1] * max_rank)[:max_rank]
        else:
            ap = sum(hit / rank for hit, rank in enumerate(hit_ranks, start=1)) / len(good)
            cmc = [1 if rank >= hit_ranks[0] else 0 for rank in range(1, max_rank + 1)]
        cmcs.append(cmc)
        aps.append(ap)
        inps.append(len(good) / hit_ranks[-1])
    if not aps:
        return None
    return np.mean(cmcs, axis=0), float(np.mean(aps)), float(np.mean(inps)), len(aps)


def assert_matches(scores: Scores, expected) -> None:
    cmc, mean_ap, mean_inp, count = expected
    assert scores.num_queries == count
    np.testing.assert_allclose(scores.cmc, cmc, rtol=0, atol=1e-9)
    assert scores.map == pytest.approx(mean_ap, abs=1e-9)
    assert scores.minp == pytest.approx(mean_inp, abs=1e-9)
    assert [scores.rank1, scores.rank5, scores.rank10, scores.rank20] == pytest.approx(cmc[[0, 4, 9, 19]], abs=1e-9)


def random_case(rng, tied: bool):
    """A small query/gallery problem with ties, distractors (0), junk (-1), single-camera ids."""
    num_q, num_g = int(rng.integers(1, 12)), int(rng.integers(1, 45))
    num_ids, num_cams = int(rng.integers(1, 6)), int(rng.integers(1, 4))
    qp = rng.integers(0, num_ids + 1, num_q)
    qc = rng.integers(0, num_cams, num_q)
    gp = rng.integers(-1, num_ids + 1, num_g)
    gc = rng.integers(0, num_cams, num_g)
    if tied:
        # Few distinct values, negative ones and -0.0 included: many exact ties.
        dist = rng.integers(-2, 3, (num_q, num_g)).astype(np.float32) * np.float32(0.5)
        dist[rng.random(dist.shape) < 0.1] = -0.0
    else:
        dist = rng.standard_normal((num_q, num_g)).astype(np.float32)
    return dist, qp, qc, gp, gc


@pytest.mark.parametrize("tied", [True, False], ids=["ties", "no-ties"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_distances_path_matches_reference(protocol, tied):
    rng = np.random.default_rng(1 + tied)
    checked = 0
    for _ in range(150):
        dist, qp, qc, gp, gc = random_case(rng, tied)
        expected = reference_scores(dist, qp, qc, gp, gc, protocol)
        labels = dict(query_pids=qp, query_cams=qc, gallery_pids=gp, gallery_cams=gc)
        chunk = int(rng.integers(1, len(qp) + 1))
        if expected is None:
            with pytest.raises(MetricsError, match="No query has a good match|gallery is empty"):
                score(None, None, distances=dist, protocol=protocol, chunk_size=chunk, **labels)
            continue
        assert_matches(score(None, None, distances=dist, protocol=protocol, chunk_size=chunk, **labels), expected)
        checked += 1
    assert checked > 80


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_larger_gallery_matches_reference(protocol):
    rng = np.random.default_rng(7)
    num_q, num_g = 60, 1500
    gp = rng.integers(-1, 80, num_g)
    gc = rng.integers(0, 6, num_g)
    qp, qc = rng.integers(1, 80, num_q), rng.integers(0, 6, num_q)
    dist = rng.random((num_q, num_g)).astype(np.float32)
    dist[:, ::7] = np.round(dist[:, ::7], 2)  # some ties
    labels = dict(query_pids=qp, query_cams=qc, gallery_pids=gp, gallery_cams=gc)
    got = score(None, None, distances=dist, protocol=protocol, chunk_size=16, **labels)
    assert_matches(got, reference_scores(dist, qp, qc, gp, gc, protocol))


def exact_features(rng, rows, metric):
    """Features whose distances float32 computes exactly, so any summation order gives the same ranking."""
    if metric == "cosine":
        return rng.choice([-1.0, 1.0], (rows, 4)).astype(np.float32)  # norm 2: normalised entries are +-0.5
    return rng.integers(-3, 4, (rows, 3)).astype(np.float32)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_test_set_path_matches_reference(protocol, metric):
    rng = np.random.default_rng(3)
    checked = 0
    for _ in range(60):
        size = int(rng.integers(2, 40))
        feats = exact_features(rng, size, metric)
        pids = rng.integers(-1, 5, size)
        cams = rng.integers(0, 3, size)
        candidates = np.flatnonzero(pids != -1)
        if not len(candidates):
            continue
        queries = rng.choice(candidates, int(rng.integers(1, len(candidates) + 1)), replace=False)
        gallery = np.arange(size)
        if protocol == "standard":
            gallery = np.setdiff1d(gallery[pids != -1], queries)
        dist = cdist(feats[queries].astype(np.float64), feats[gallery].astype(np.float64), metric)
        expected = reference_scores(dist, pids[queries], cams[queries], pids[gallery], cams[gallery], protocol)
        chunk = int(rng.integers(1, 8))
        if expected is None:
            with pytest.raises(MetricsError):
                score_test_set(feats, pids, cams, queries, protocol=protocol, metric=metric, chunk_size=chunk)
            continue
        got = score_test_set(feats, pids, cams, queries, protocol=protocol, metric=metric, chunk_size=chunk)
        assert_matches(got, expected)
        checked += 1
    assert checked > 30


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_distance_matrix_matches_scipy(metric):
    rng = np.random.default_rng(4)
    query = rng.standard_normal((9, 16)).astype(np.float32)
    gallery = 3 * rng.standard_normal((13, 16)).astype(np.float32)
    gallery[2] = query[0]  # identical pair: distance 0
    got = distance_matrix(query, gallery, metric=metric)
    assert got.dtype == torch.float32 and got.shape == (9, 13)
    expected = cdist(query.astype(np.float64), gallery.astype(np.float64), metric)
    np.testing.assert_allclose(got.numpy(), expected, atol=2e-5)
    assert float(got[0, 2]) == pytest.approx(0.0, abs=2e-5)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_features_path_equals_distances_path(protocol, metric):
    rng = np.random.default_rng(5)
    query, gallery = rng.standard_normal((40, 32)), rng.standard_normal((300, 32))
    labels = dict(
        query_pids=rng.integers(0, 30, 40),
        query_cams=rng.integers(0, 6, 40),
        gallery_pids=rng.integers(-1, 30, 300),
        gallery_cams=rng.integers(0, 6, 300),
    )
    dist = distance_matrix(query, gallery, metric=metric)
    from_features = score(query, gallery, protocol=protocol, metric=metric, chunk_size=40, **labels)
    from_distances = score(None, None, distances=dist, protocol=protocol, **labels)
    assert from_features.as_dict() == pytest.approx(from_distances.as_dict(), abs=1e-12)


def hand_worked_case():
    """Two scored queries and one without a good match; ranks worked out in the comments."""
    # gallery:  g0       g1      g2      g3       g4      g5
    gp = np.array([1, 2, 1, -1, 3, 1])
    gc = np.array([0, 1, 1, 2, 0, 2])
    dist = np.array(
        [
            # Query A (pid 1, cam 0). Order g0..g5. Junk: g0 (pid 1, cam 0), g3 (pid -1).
            # After junk removal: g1 miss (rank 1), g2 hit (rank 2), g4 miss (3), g5 hit (4).
            [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],
            # Query B (pid 2, cam 0). Order g1 g3 g4 g2 g5 g0; good = g1 only, at rank 1.
            [0.9, 0.0, 0.5, 0.1, 0.2, 0.6],
            # Query C (pid 3, cam 0): its only gallery item g4 is in its own camera, so it has
            # no good match and is skipped by both protocols.
            [0.3, 0.2, 0.1, 0.0, 0.5, 0.4],
        ],
        dtype=np.float32,
    )
    labels = dict(query_pids=np.array([1, 2, 3]), query_cams=np.array([0, 0, 0]), gallery_pids=gp, gallery_cams=gc)
    return dist, labels


def test_hand_worked_mars_official():
    dist, labels = hand_worked_case()
    got = score(None, None, distances=dist, protocol="mars-official", **labels)
    # Query A, trapezoid walk (recall r, precision p, p_prev starts at 1):
    #   rank 1 miss: r 0,   p 0    -> +0
    #   rank 2 hit:  r 1/2, p 1/2  -> +(1/2)(0 + 1/2)/2   = 1/8
    #   rank 3 miss: r 1/2, p 1/3  -> +0
    #   rank 4 hit:  r 1,   p 2/4  -> +(1/2)(1/3 + 1/2)/2 = 5/24      AP = 1/8 + 5/24 = 1/3
    # Query B: rank 1 hit: r 1, p 1 -> +(1)(1 + 1)/2 = 1                AP = 1
    assert got.num_queries == 2
    assert got.map == pytest.approx((1 / 3 + 1) / 2, abs=1e-12)
    # mINP: A has 2 good, the hardest at rank 4 -> 1/2; B 1/1.
    assert got.minp == pytest.approx(0.75, abs=1e-12)
    # CMC: first hits at ranks 2 (A) and 1 (B).
    assert got.rank1 == 0.5 and got.rank5 == 1.0 and list(got.cmc[:3]) == [0.5, 1.0, 1.0]


def test_hand_worked_standard():
    dist, labels = hand_worked_case()
    got = score(None, None, distances=dist, protocol="standard", **labels)
    # Same ranks; AP = mean precision at the hits: A (1/2 + 2/4) / 2 = 1/2, B 1/1.
    assert got.num_queries == 2
    assert got.map == pytest.approx(0.75, abs=1e-12)
    assert got.minp == pytest.approx(0.75, abs=1e-12)
    assert got.rank1 == 0.5 and got.rank5 == 1.0


def test_hand_worked_test_set_protocols():
    # One-dimensional features, Euclidean: every distance is exact.
    #   row:   r0  r1  r2  r3  r4
    #   x:     0   1   3   2   0.5
    #   pid:   1   1   1   2   -1
    #   cam:   0   1   1   0   1        queries r0 and r1
    feats = np.array([[0.0], [1.0], [3.0], [2.0], [0.5]], dtype=np.float32)
    pids, cams = np.array([1, 1, 1, 2, -1]), np.array([0, 1, 1, 0, 1])
    official = score_test_set(feats, pids, cams, np.array([0, 1]), protocol="mars-official", metric="euclidean")
    # mars-official, whole test set as gallery.
    # r0: order r0 (junk, itself) r4 (junk) r1 hit r3 miss r2 hit -> hits at ranks 1, 3;
    #     AP = (1/2)(1 + 1)/2 + (1/2)(1/2 + 2/3)/2 = 1/2 + 7/24 = 19/24; INP = 2/3.
    # r1: order r1 (junk) r4 (junk) r0 (distance 1, ties with r3, lower index first) hit
    #     r3 miss r2 (same cam, junk) -> one hit at rank 1; AP = 1, INP = 1.
    assert official.num_queries == 2
    assert official.map == pytest.approx((19 / 24 + 1) / 2, abs=1e-12)
    assert official.minp == pytest.approx((2 / 3 + 1) / 2, abs=1e-12)
    assert official.rank1 == 1.0
    standard = score_test_set(feats, pids, cams, np.array([0, 1]), protocol="standard", metric="euclidean")
    # standard: gallery = r2, r3 (queries and pid -1 removed).
    # r0: r3 miss, r2 hit -> AP = 1/2, INP = 1/2, first hit at rank 2.
    # r1: r2 is its own camera (removed), r3 another pid: no good match, skipped.
    assert standard.num_queries == 1
    assert standard.map == pytest.approx(0.5, abs=1e-12)
    assert standard.minp == pytest.approx(0.5, abs=1e-12)
    assert standard.rank1 == 0.0 and standard.rank5 == 1.0


def test_scores_as_dict_plain_floats_and_cmc_shape():
    dist, labels = hand_worked_case()
    got = score(None, None, distances=dist, max_rank=30, **labels)
    as_dict = got.as_dict()
    assert set(as_dict) == {"rank1", "rank5", "rank10", "rank20", "map", "minp", "num_queries"}
    assert all(type(value) is float for value in as_dict.values())
    assert as_dict["num_queries"] == 2.0
    assert got.cmc.shape == (30,) and got.cmc.dtype == np.float64
    assert np.all(np.diff(got.cmc) >= 0) and 0 <= got.cmc[0] <= got.cmc[-1] <= 1
    assert not got.cmc.flags.writeable


def test_accepts_torch_tensors_with_grad():
    rng = np.random.default_rng(6)
    feats = torch.tensor(rng.standard_normal((30, 8)), dtype=torch.float32, requires_grad=True)
    pids = torch.tensor(rng.integers(0, 6, 30))
    cams = torch.tensor(rng.integers(0, 3, 30))
    from_torch = score_test_set(feats, pids, cams, torch.arange(0, 30, 3), device="cpu")
    from_numpy = score_test_set(feats.detach().numpy(), pids.numpy(), cams.numpy(), np.arange(0, 30, 3))
    assert from_torch.as_dict() == from_numpy.as_dict()


def test_does_not_modify_inputs():
    rng = np.random.default_rng(8)
    feats = rng.standard_normal((20, 5)).astype(np.float32)
    before = feats.copy()
    pids, cams = rng.integers(0, 4, 20), rng.integers(0, 3, 20)
    score_test_set(feats, pids, cams, np.arange(5))
    score(feats[:5], feats, query_pids=pids[:5], query_cams=cams[:5], gallery_pids=pids, gallery_cams=cams)
    distance_matrix(feats, feats)
    np.testing.assert_array_equal(feats, before)
    dist = rng.standard_normal((5, 20)).astype(np.float32)
    dist_before = dist.copy()
    score(None, None, distances=dist, query_pids=pids[:5], query_cams=cams[:5], gallery_pids=pids, gallery_cams=cams)
    np.testing.assert_array_equal(dist, dist_before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_cuda_matches_cpu(protocol, metric):
    rng = np.random.default_rng(9)
    feats = exact_features(rng, 500, metric)  # exact distances: both devices rank alike, ties included
    pids, cams = rng.integers(-1, 60, 500), rng.integers(0, 6, 500)
    queries = np.flatnonzero(pids != -1)[::4]
    cpu = score_test_set(feats, pids, cams, queries, protocol=protocol, metric=metric, device="cpu")
    cuda = score_test_set(feats, pids, cams, queries, protocol=protocol, metric=metric, device="cuda")
    assert cuda.as_dict() == pytest.approx(cpu.as_dict(), abs=1e-12)
    np.testing.assert_allclose(cuda.cmc, cpu.cmc, rtol=0, atol=1e-12)


# Bad input -----------------------------------------------------------------------------


def small_test_set():
    rng = np.random.default_rng(10)
    pids = np.array([1, 1, 2, 2, 3, 3, 0, -1, 1, 2])
    return rng.standard_normal((10, 4)).astype(np.float32), pids, np.arange(10) % 3


def test_error_is_value_error():
    assert issubclass(MetricsError, ValueError)


@pytest.mark.parametrize(
    ("pids_len", "cams_len", "match"),
    [(9, 10, "pids has 9 entries but there are 10 feature rows"), (10, 11, "cams has 11 entries")],
)
def test_length_mismatch_test_set(pids_len, cams_len, match):
    feats, pids, cams = small_test_set()
    with pytest.raises(MetricsError, match=match):
        score_test_set(feats, np.resize(pids, pids_len), np.resize(cams, cams_len), np.array([0]))


def test_length_mismatch_query_gallery():
    feats, pids, cams = small_test_set()
    with pytest.raises(MetricsError, match="gallery_cams has 9 entries but there are 10 gallery rows"):
        score(feats[:2], feats, query_pids=pids[:2], query_cams=cams[:2], gallery_pids=pids, gallery_cams=cams[:9])
    with pytest.raises(MetricsError, match="query_pids has 3 entries but there are 2 query rows"):
        score(
            None, None, distances=np.zeros((2, 10)), query_pids=pids[:3], query_cams=cams[:2], gallery_pids=pids,
            gallery_cams=cams,
        )
    with pytest.raises(MetricsError, match="4 dimensions but gallery features have 3"):
        score(feats[:2], feats[:, :3], query_pids=pids[:2], query_cams=cams[:2], gallery_pids=pids, gallery_cams=cams)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_features(bad):
    feats, pids, cams = small_test_set()
    feats[3, 1] = bad
    match = r"features \(shape \(10, 4\)\) has 1 NaN or infinite values, the first at index \[3, 1\]"
    with pytest.raises(MetricsError, match=match):
        score_test_set(feats, pids, cams, np.array([0, 2]))


def test_non_finite_distances():
    _, pids, cams = small_test_set()
    dist = np.ones((2, 10))
    dist[1, 4] = math.nan
    with pytest.raises(MetricsError, match="distances .* NaN or infinite"):
        score(
            None, None, distances=dist, query_pids=pids[:2], query_cams=cams[:2], gallery_pids=pids, gallery_cams=cams
        )


def test_huge_finite_features_are_accepted():
    feats, pids, cams = small_test_set()
    feats[:, 0] = 3e38  # the float32 sum overflows, the values do not
    assert score_test_set(feats, pids, cams, np.array([0, 2]), metric="cosine").num_queries == 2


@pytest.mark.parametrize(
    ("index", "match"),
    [
        (np.array([0, 10]), r"outside the 10 test rows \(e.g. \[10\]\)"),
        (np.array([-1, 2]), r"outside the 10 test rows \(e.g. \[-1\]\)"),
        (np.array([0, 2, 0]), r"repeats rows \[0\]"),
        (np.array([0.0, 2.0]), "query_index must be a 1-D integer array"),
        (np.array([[0, 2]]), "query_index must be a 1-D integer array"),
    ],
)
def test_bad_query_index(index, match):
    feats, pids, cams = small_test_set()
    with pytest.raises(MetricsError, match=match):
        score_test_set(feats, pids, cams, index)


def test_unknown_protocol_and_metric():
    feats, pids, cams = small_test_set()
    with pytest.raises(MetricsError, match="Unknown protocol 'mars'; expected one of mars-official, standard"):
        score_test_set(feats, pids, cams, np.array([0]), protocol="mars")
    with pytest.raises(MetricsError, match="Unknown metric 'cos'"):
        score_test_set(feats, pids, cams, np.array([0]), metric="cos")
    with pytest.raises(MetricsError, match="Unknown metric"):
        distance_matrix(feats, feats, metric="l2")


def test_features_xor_distances():
    feats, pids, cams = small_test_set()
    labels = dict(query_pids=pids[:2], query_cams=cams[:2], gallery_pids=pids, gallery_cams=cams)
    with pytest.raises(MetricsError, match="either query_features and gallery_features, or distances"):
        score(feats[:2], feats, distances=np.zeros((2, 10)), **labels)
    with pytest.raises(MetricsError, match="either query_features and gallery_features, or distances"):
        score(None, None, **labels)


def test_junk_query_and_no_valid_query():
    feats, pids, cams = small_test_set()
    with pytest.raises(MetricsError, match=r"query_pids has pid -1 \(junk\) at query rows \[1\]"):
        score_test_set(feats, pids, cams, np.array([0, 7]))
    with pytest.raises(MetricsError, match="There are no queries"):
        score_test_set(feats, pids, cams, np.array([], dtype=np.int64))
    single_camera = np.zeros(10, dtype=np.int64)
    with pytest.raises(MetricsError, match="No query has a good match"):
        score_test_set(feats, pids, single_camera, np.array([0, 2]))


@pytest.mark.parametrize(("option", "value"), [("chunk_size", 0), ("max_rank", 10), ("max_rank", 20.0)])
def test_bad_options(option, value):
    feats, pids, cams = small_test_set()
    with pytest.raises(MetricsError, match=f"{option} must be an integer >= "):
        score_test_set(feats, pids, cams, np.array([0]), **{option: value})


def test_float_labels_rejected():
    feats, pids, cams = small_test_set()
    with pytest.raises(MetricsError, match="pids must be a 1-D integer array, got shape \\(10,\\) dtype float64"):
        score_test_set(feats, pids.astype(float), cams, np.array([0]))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_per_query_outcomes_give_every_score_exactly(protocol, tmp_path):
    """The kept per-query columns are what each score is a plain mean of: equal, not close, after a file round trip."""
    import statistics

    import polars as pl

    from harness.evaluate.queries import read_queries, scores_table, write_queries

    rng = np.random.default_rng(11)
    pids = np.array([p for p in range(12) for _ in range(4)] + [-1, -1, 12])  # pid 12: one tracklet, no good match
    cams = np.array([1 + i % 3 for i in range(len(pids) - 3)] + [1, 2, 3])
    feats = rng.normal(size=(len(pids), 16)).astype(np.float32) + pids[:, None] * 0.05
    queries = np.array([0, 5, 9, 14, 18, 22, 27, 31, 36, 41, 44, len(pids) - 1])
    rows = pl.DataFrame({"pid": pids, "camera": cams, "tracklet": [f"t{i}" for i in range(len(pids))],
                         "is_query": np.isin(np.arange(len(pids)), queries)})
    scores = score_test_set(feats, pids, cams, queries, protocol=protocol)
    write_queries(tmp_path / "q.parquet", scores_table({protocol: scores}, rows))
    table = read_queries(tmp_path / "q.parquet")
    assert table["query"].to_list() == list(range(len(queries))) and table["tracklet"][0] == "t0"
    assert table.filter(pl.col("query") == len(queries) - 1)["first_rank"].to_list() == [None]  # no good match
    valid = table.filter(pl.col("matches") > 0)
    n = valid.height
    assert scores.num_queries == n == len(queries) - 1
    for k in (1, 5, 10, 20):
        assert getattr(scores, f"rank{k}") == (valid["first_rank"] <= k).sum() / n
    assert scores.cmc.tolist() == [(valid["first_rank"] <= r).sum() / n for r in range(1, 51)]
    assert scores.map == statistics.fmean(valid["ap"].to_list())
    assert scores.minp == statistics.fmean((valid["matches"] / valid["last_rank"]).to_list())
    # Each query's AP and ranks are those of the per-query reference, query by query.
    query_index = queries[:-1]
    gallery = np.arange(len(pids)) if protocol == "mars-official" else np.setdiff1d(np.arange(len(pids)), queries)
    dist = cdist(feats[query_index] / np.linalg.norm(feats[query_index], axis=1, keepdims=True),
                 feats[gallery] / np.linalg.norm(feats[gallery], axis=1, keepdims=True))
    for i, q in enumerate(query_index):
        _, ap, _, _ = reference_scores(dist[i:i + 1], pids[[q]], cams[[q]], pids[gallery], cams[gallery], protocol)
        assert valid["ap"][i] == pytest.approx(ap, abs=1e-12)


def test_exact_means_equal_exact_mean_row_for_row():
    rng = np.random.default_rng(3)
    values = rng.random((4, 6, 301))
    values[:, :3] = values[:, :3] < 0.4  # 0/1 rows take numpy's sum
    values[1, 4, :5] = rng.random(5) * 1e17  # whole numbers beyond 2**53 and fractions stay on fsum
    values[2, 3] = np.round(rng.normal(0, 1e16, 301))  # whole, large, signed: the exact sum is over 2**53 in part
    values[3, 5, 7] = np.nan
    values[0, 5, 9] = np.inf
    want = np.array([[exact_mean(row) for row in seed] for seed in values])
    got = exact_means(values)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)  # bit for bit, NaN where fsum gives NaN
