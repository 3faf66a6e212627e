"""Reports from run records and sweep tables: Pareto plots, tables, DVC metrics (python -m harness.report)."""
