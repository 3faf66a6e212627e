"""Tiny synthetic datasets in both official layouts, written and prepared once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from datasets.prepare import prepare
from datasets.synthetic import write_duke, write_mars

# 64 x 32 pixels and prepared at the same size, so store frames must equal the decoded JPEGs exactly.
SIZE = dict(height=64, width=32)
SMALL = dict(identities=6, cameras=3, tracklets_per_id=3, min_frames=3, max_frames=12, seed=7, **SIZE)


@pytest.fixture(scope="session")
def mars_raw(tmp_path_factory: pytest.TempPathFactory):
    """(root, generated tracklet table) of a tiny MARS-layout dataset."""
    root = tmp_path_factory.mktemp("raw") / "mars"
    return root, write_mars(root, distractors=1, junk=1, **SMALL)


@pytest.fixture(scope="session")
def duke_raw(tmp_path_factory: pytest.TempPathFactory):
    """(root, generated tracklet table) of a tiny DukeV-layout dataset."""
    root = tmp_path_factory.mktemp("raw") / "duke"
    return root, write_duke(root, distractors=1, **SMALL)


@pytest.fixture(scope="session")
def mars_prepared(mars_raw, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "mars"
    prepare("mars", mars_raw[0], out, **SIZE)
    return out


@pytest.fixture(scope="session")
def duke_prepared(duke_raw, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "duke"
    prepare("duke", duke_raw[0], out, **SIZE)
    return out


@pytest.fixture
def mars_copy(mars_raw, tmp_path: Path) -> Path:
    """A writable copy of the MARS-layout dataset, for breaking it."""
    return Path(shutil.copytree(mars_raw[0], tmp_path / "mars"))


@pytest.fixture
def duke_copy(duke_raw, tmp_path: Path) -> Path:
    """A writable copy of the DukeV-layout dataset, for breaking it."""
    return Path(shutil.copytree(duke_raw[0], tmp_path / "duke"))
