"""Wires models and datasets to config, Ray, MLflow, fvcore and DVC."""
