"""A driver creating the MLflow store, for the concurrent-creation test (spawned processes import it by name)."""

from __future__ import annotations

from harness.results.tracking import connect


def create_store(uri: str, barrier) -> None:
    """Wait for the other drivers, then create (or open) the store at `uri`."""
    barrier.wait()
    connect(uri, "nvan-bench")
