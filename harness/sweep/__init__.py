"""Ray Tune sweeps of accuracy against cost (python -m harness.sweep)."""
