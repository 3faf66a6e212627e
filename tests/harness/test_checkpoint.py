"""Checkpoints are plain data loaded with torch's weights-only unpickler: a crafted file cannot run code."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.checkpoint import load_model, read_state, rng_state, save_state, set_rng_state
from models.checkpoints import CheckpointError
from models.presets import preset_spec
from models.video_reid import build_model

ROOT = Path(__file__).resolve().parents[2]


class Payload:
    """Pickles as a call of os.system: what an attacker's checkpoint would carry."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def evil_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"spec": Payload(f"touch {marker}"), "model": {}}, path)
    return path


def one_paragraph(stderr: str) -> bool:
    return "Traceback" not in stderr and stderr.strip().startswith("error: ") and "\n\n" not in stderr.strip()


def test_state_round_trip_restores_weights_and_every_rng(tmp_path):
    spec = preset_spec("nvan", 5, width=4)
    model = build_model(spec)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, 2, 3, 32, 16))[0].sum().backward()
    optimizer.step()
    random.random(), np.random.rand(), torch.rand(1)
    saved = rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1))
    save_state(tmp_path, model, spec, optimizer=optimizer.state_dict(), epoch=3, rng=saved,
               best={"epoch": 2, "value": -1.0, "scores": None, "cmc": None})
    state = read_state(tmp_path)  # weights_only=True inside
    set_rng_state(state["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected
    loaded, loaded_spec = load_model(tmp_path)
    assert loaded_spec == spec
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    torch.optim.Adam(loaded.parameters()).load_state_dict(state["optimizer"])


def test_a_code_carrying_checkpoint_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = evil_checkpoint(tmp_path / "state.pt", marker)
    with pytest.raises(CheckpointError, match="refusing to load .*GLOBAL posix.system.*could run code"):
        read_state(path)
    assert not marker.exists()


def test_random_bytes_are_named_as_no_checkpoint(tmp_path):
    # Garbage reaches the unpickler's IndexError, KeyError, ... depending on its first bytes (CI hit one).
    path = tmp_path / "garbage.pt"
    for seed in range(300):
        path.write_bytes(random.Random(seed).randbytes(64 + seed))
        with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint"):
            read_state(path)


@pytest.mark.slow
def test_evaluate_cli_refuses_bad_checkpoints(cli, tmp_path, prepared_root):
    marker = tmp_path / "pwned"
    (tmp_path / "garbage.pt").write_bytes(random.Random(0).randbytes(4096))
    (tmp_path / "record.json").write_text(json.dumps({"spec": {}, "model": {}}))
    sets = ["--set", f"data.prepared_root={prepared_root}", "--set", "data.frames=4", "--set", "data.height=64",
            "--set", "data.width=32"]
    # The attack as reported, in a real process; the rest through the same entry point in this one.
    evil = evil_checkpoint(tmp_path / "evil.pt", marker)
    done = subprocess.run([sys.executable, "-m", "harness.evaluate", "--checkpoint", str(evil), *sets],
                          capture_output=True, text=True, cwd=ROOT, timeout=1800)
    assert done.returncode == 2 and "refusing to load" in done.stderr and one_paragraph(done.stderr), done.stderr
    for path, message in [(tmp_path / "garbage.pt", "is not a PyTorch checkpoint"),
                          (tmp_path / "record.json", "is not a PyTorch checkpoint")]:
        done = cli("harness.evaluate", "--checkpoint", str(path), *sets)
        assert done.returncode == 2 and message in done.stderr and one_paragraph(done.stderr), done.stderr
    official = cli("harness.evaluate", "--official", str(evil), "--preset", "nvan", *sets)
    assert official.returncode == 2 and "refusing to load" in official.stderr and one_paragraph(official.stderr)
    assert "weights_only=False" not in official.stderr  # torch's advice to turn the protection off
    assert not marker.exists()
