"""software_versions: what a run record and an MLflow run say the run ran with.

That a training's record and MLflow run carry them is checked in test_train.py, on its real training.
"""

from __future__ import annotations

import platform
from importlib.metadata import version

from harness.versions import PACKAGES, software_versions


def test_software_versions_are_the_installed_ones():
    found = software_versions()
    assert {"torch", "ray", "optuna", "mlflow", "dvc", "numpy", "polars"} <= set(PACKAGES)
    assert found == {name: version(name) for name in PACKAGES} | {"python": platform.python_version()}
