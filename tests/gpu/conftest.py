"""Fixtures of the CUDA tests (run by `python -m harness.gpu_check`; every module skips itself without CUDA)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from datasets.prepare import prepare
from datasets.synthetic import write_mars


@pytest.fixture(scope="session")
def prepared_mars(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared MARS-layout set at the paper's frame size (256 x 128): 4 training identities, 10 test
    tracklets, every tracklet 8-10 frames."""
    raw = tmp_path_factory.mktemp("raw") / "mars"
    write_mars(raw, identities=8, cameras=2, tracklets_per_id=2, min_frames=8, max_frames=10, height=256,
               width=128, distractors=1, junk=1, seed=0)
    out = tmp_path_factory.mktemp("prepared") / "mars"
    prepare("mars", raw, out, height=256, width=128)
    return out


@pytest.fixture
def nccl_group():
    """A one-process NCCL group on a free loopback port: SyncBatchNorm and DDP need an initialised group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
