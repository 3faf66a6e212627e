"""Every `python -m` command imports as its module path and shows a usage line a user can copy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ("harness.train", "harness.evaluate", "harness.sweep", "harness.report", "harness.cost", "harness.bench",
            "harness.gpu_check", "harness.plan", "datasets.synthetic", "datasets.prepare")


@pytest.mark.slow(seconds=30)
def test_every_command_runs_its_help_under_its_own_name():
    # One process per command, as a user starts it: a package's __main__ or a module, from the project root.
    for command in COMMANDS:
        done = subprocess.run([sys.executable, "-m", command, "--help"], capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0, f"{command}: {done.stderr[-2000:]}"
        assert done.stdout.startswith(f"usage: python -m {command} "), f"{command}: {done.stdout[:200]}"
