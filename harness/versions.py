"""The installed versions of the software a run's numbers depend on, for its record and its MLflow run."""

from __future__ import annotations

import platform
from importlib.metadata import version

# What trains, tunes, tracks, pipelines and tabulates a run: a new release of any of these has changed
# numbers or broken runs (optuna 5.1's sampler that Ray Tune could not pickle) while the code stood still.
PACKAGES = ("torch", "ray", "optuna", "mlflow", "dvc", "numpy", "polars")


def software_versions() -> dict[str, str]:
    """{package: installed version} of PACKAGES (as pip has them, e.g. torch '2.13.0+cpu'), and python's."""
    return {name: version(name) for name in PACKAGES} | {"python": platform.python_version()}
