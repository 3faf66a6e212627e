"""Speed and peak memory of harness.metrics on MARS-shaped features.

Run: pytest tests/benchmarks/test_metrics_speed.py --benchmark-only -n 0
Target (issue 4): the whole mars-official scoring of the MARS test set, distances included,
under 2 s on a 2-core CPU; a per-query Python loop is the comparison.
Target (issue 22): the 95 % identity-clustered query interval of one run's scores on MARS's 1,980 queries
well under a second; the report's whole uncertainty for three presets of four seeds each (intervals,
2,000 front draws, P(front), sure-front and their paired comparisons) likewise.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from harness.evaluate.metrics import score_test_set
from harness.evaluate.statistics import Sample, compare, query_clusters, query_interval, query_values
from harness.evaluate.front import assess

NUM_TRACKLETS, NUM_QUERIES, DIM, NUM_IDS, NUM_CAMS, NUM_DISTRACTORS = 12180, 1980, 2048, 625, 6, 2500
# Per-identity noise around unit-variance cluster centres: easy is well separated (all
# metrics 1.0), hard barely (rank-1 ~ 0.6, mAP ~ 0.26).
NOISE = {"easy": 0.5, "hard": 4.0}
TARGET_S = 2.0


def mars_shaped(noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(features, pids, cams, query_index) like the MARS test set: ids 1..625, distractors 0, junk -1."""
    rng = np.random.default_rng(seed)
    pids, cams = [], []
    for pid in range(1, NUM_IDS + 1):
        for cam in rng.choice(NUM_CAMS, size=rng.integers(2, NUM_CAMS + 1), replace=False):
            count = int(rng.integers(1, 6))
            pids += [pid] * count
            cams += [int(cam)] * count
    num_junk = NUM_TRACKLETS - len(pids) - NUM_DISTRACTORS
    pids = np.array(pids + [0] * NUM_DISTRACTORS + [-1] * num_junk)
    cams = np.concatenate([cams, rng.integers(0, NUM_CAMS, NUM_DISTRACTORS + num_junk)])
    centres = rng.standard_normal((NUM_IDS + 1, DIM), dtype=np.float32)
    features = centres[np.maximum(pids, 0)] + noise * rng.standard_normal((NUM_TRACKLETS, DIM), dtype=np.float32)
    unlabelled = pids <= 0
    features[unlabelled] = np.sqrt(1 + noise**2) * rng.standard_normal((unlabelled.sum(), DIM), dtype=np.float32)
    # As in MARS, queries are one tracklet per (identity, camera), so each has a good match.
    _, first = np.unique(np.stack([pids, cams]), axis=1, return_index=True)
    candidates = first[pids[first] > 0]
    query_index = np.sort(rng.choice(candidates, NUM_QUERIES, replace=False))
    return features, pids, cams, query_index


def per_query_loop(features, pids, cams, query_index) -> tuple[float, float]:
    """mars-official (rank-1, mAP) the plain way: cosine matrix, then per query argsort + compute_AP.m's walk."""
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    distances = 1 - unit[query_index] @ unit.T
    rank1, aps = [], []
    for row, query in enumerate(query_index):
        same = pids == pids[query]
        good = np.flatnonzero(same & (cams != cams[query]))
        junk = np.flatnonzero((pids == -1) | (same & (cams == cams[query])))
        order = np.argsort(distances[row], kind="stable")
        ap, old_recall, old_precision, hits, kept, first = 0.0, 0.0, 1.0, 0, 0, None
        for item in order:
            if np.any(junk == item):
                continue
            kept += 1
            if np.any(good == item):
                hits += 1
                first = first or kept
            recall, precision = hits / len(good), hits / kept
            ap += (recall - old_recall) * (old_precision + precision) / 2
            old_recall, old_precision = recall, precision
            if hits == len(good):
                break
        rank1.append(first == 1)
        aps.append(ap)
    return float(np.mean(rank1)), float(np.mean(aps))


@pytest.fixture(scope="module", params=list(NOISE))
def test_set(request):
    return request.param, mars_shaped(NOISE[request.param])


def test_mars_official_scoring(benchmark, test_set):
    name, data = test_set
    scores = benchmark.pedantic(score_test_set, args=data, kwargs={"device": "cpu"}, rounds=5, warmup_rounds=1)
    benchmark.extra_info.update(features=name, **scores.as_dict())
    assert scores.num_queries == NUM_QUERIES
    assert benchmark.stats.stats.median < TARGET_S


def test_per_query_loop(benchmark, test_set):
    name, data = test_set
    rank1, mean_ap = benchmark.pedantic(per_query_loop, args=data, rounds=1, iterations=1)
    start = time.perf_counter()
    scores = score_test_set(*data, device="cpu")
    fast_s = time.perf_counter() - start
    benchmark.extra_info.update(features=name, rank1=rank1, map=mean_ap, fast_s=fast_s)
    benchmark.extra_info["speedup"] = benchmark.stats.stats.median / fast_s
    # Float32 matrices from different BLAS calls may round a near-tie differently.
    assert scores.rank1 == pytest.approx(rank1, abs=2 / NUM_QUERIES)
    assert scores.map == pytest.approx(mean_ap, abs=1e-4)


def test_query_interval_of_one_run(benchmark, test_set):
    name, data = test_set
    outcomes = score_test_set(*data, device="cpu").outcomes
    values = query_values(outcomes)
    clusters = query_clusters(data[1][data[3]][outcomes.valid])  # the queries' identities
    found = benchmark.pedantic(query_interval, args=(values, clusters), rounds=5, warmup_rounds=1)
    benchmark.extra_info.update(features=name, queries=values.shape[1], rank1_interval=found["rank1"])
    assert values.shape[1] == NUM_QUERIES
    assert benchmark.stats.stats.median < 1.0


def test_uncertainty_of_three_presets(benchmark):
    rng = np.random.default_rng(0)
    clusters = np.sort(rng.integers(0, NUM_IDS, NUM_QUERIES))
    values = {p: (rng.random((4, 5, NUM_QUERIES)) < 0.4).astype(np.float64) for p in ("baseline", "nvan", "ste_nvan")}
    cost = {"baseline": 1.0, "nvan": 2.0, "ste_nvan": 3.0}

    def report() -> None:
        # Fresh samples each round: a Sample caches its cluster sums and estimate.
        samples = {p: Sample((0, 1, 2, 3), v, clusters) for p, v in values.items()}
        assess(samples, cost, draws=2000)
        for a, b in (("baseline", "nvan"), ("baseline", "ste_nvan"), ("nvan", "ste_nvan")):
            compare(samples[a], samples[b])

    benchmark.pedantic(report, rounds=5, warmup_rounds=1)
    assert benchmark.stats.stats.median < 1.0


CHILD = """
import json, sys
sys.path.insert(0, {folder!r})
from test_metrics_speed import NOISE, mars_shaped
from harness.evaluate.metrics import score_test_set

def kib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field))

data = mars_shaped(NOISE["hard"])
before = kib("VmRSS:")
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")  # resets VmHWM (peak RSS) to the current RSS
score_test_set(*data, device="cpu")
print(json.dumps({{"rss_before_mib": before / 1024, "peak_mib": kib("VmHWM:") / 1024}}))
"""


def test_peak_memory(benchmark):
    # A fresh interpreter: its /proc VmHWM covers only its own memory, not pytest's.
    folder = str(Path(__file__).parent)

    def run_child() -> dict[str, float]:
        done = subprocess.run(
            [sys.executable, "-c", CHILD.format(folder=folder)], capture_output=True, text=True, check=True
        )
        return json.loads(done.stdout)

    memory = benchmark.pedantic(run_child, rounds=1, iterations=1)
    memory["scoring_extra_mib"] = memory["peak_mib"] - memory["rss_before_mib"]
    benchmark.extra_info.update(memory)
    assert memory["scoring_extra_mib"] < 1024
