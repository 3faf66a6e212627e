"""Measuring cost: MACs, latency and memory (python -m harness.cost), throughput (harness.bench), GPU checks."""
