"""Evaluation: test-set features, re-ID metrics per protocol (python -m harness.evaluate)."""
