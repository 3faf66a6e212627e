"""Suite-wide ordering for two xdist workers under `--dist worksteal`.

worksteal hands the first half of the collection to one worker and the second half to the
other, then lets an idle worker steal queued (not running) tests from the end of the other's
queue. A running test cannot be stolen, so the long integration tests are placed up front:
the ones that keep both cores busy (`slow(cores=2)`: whole DVC pipelines) one after another in
the first half, since two at once on 2 cores take twice as long each; the other long ones
longest first, each into the half with less declared time.
"""

from __future__ import annotations

import os
import tempfile

import pytest

# The digests of prepared data this machine has checked (datasets.integrity): one cache per test session.
os.environ.setdefault("NVAN_CACHE", tempfile.mkdtemp(prefix="nvan-cache-"))


def expected_seconds(item: pytest.Item) -> float:
    """The duration a test declares with @pytest.mark.slow(seconds=N), 1 for other slow tests, 0 otherwise."""
    marker = item.get_closest_marker("slow")
    return 0.0 if marker is None else float(marker.kwargs.get("seconds", 1))


def cores(item: pytest.Item) -> int:
    """The cores a test keeps busy, as declared with @pytest.mark.slow(cores=N); 1 by default."""
    marker = item.get_closest_marker("slow")
    return 1 if marker is None else int(marker.kwargs.get("cores", 1))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Deterministic: every xdist worker must collect the same order.
    declared = sorted((item for item in items if expected_seconds(item) > 1), key=expected_seconds, reverse=True)
    halves: tuple[list[pytest.Item], list[pytest.Item]] = ([], [])
    load = [0.0, 0.0]
    for item in sorted(declared, key=cores, reverse=True):  # stable: longest first within each group
        side = 0 if cores(item) > 1 or load[0] <= load[1] else 1
        halves[side].append(item)
        load[side] += expected_seconds(item)
    rest = sorted((item for item in items if expected_seconds(item) <= 1), key=expected_seconds, reverse=True)
    first = max(len(items) // 2 - len(halves[0]), 0)  # worksteal's split point: len(items) // 2
    items[:] = halves[0] + rest[:first] + halves[1] + rest[first:]
