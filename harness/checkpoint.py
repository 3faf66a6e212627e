"""Training checkpoints: one `state.pt` holding the spec, weights, optimizer, scheduler and RNG state."""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.cli import UserError
from models.spec import ModelSpec
from models.video_reid import VideoReIDNet, build_model

STATE_FILE = "state.pt"


def rng_state() -> dict[str, Any]:
    """The Python, numpy and torch RNG states, to restore on resume."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore RNG states saved by `rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_state(directory: Path, model: nn.Module, spec: ModelSpec, **training: Any) -> Path:
    """Write `directory/state.pt` with the spec, the (unwrapped) model weights and `training` state."""
    path = Path(directory) / STATE_FILE
    weights = getattr(model, "module", model).state_dict()
    torch.save({"spec": asdict(spec), "model": weights, **training}, path)
    return path


def read_state(path: Path) -> dict[str, Any]:
    """The dict saved by `save_state`; `path` is the file or the checkpoint folder holding it."""
    path = Path(path)
    file = path / STATE_FILE if path.is_dir() else path
    if not file.exists():
        raise UserError(f"checkpoint {file} does not exist; pass a {STATE_FILE} written by harness.train "
                        f"or the checkpoint folder that holds it")
    state = torch.load(file, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or "spec" not in state or "model" not in state:
        raise UserError(f"{file} is not a harness.train checkpoint (no 'spec' and 'model' entries); "
                        f"for an official STE-NVAN .pth use --official")
    return state


def load_model(path: Path) -> tuple[VideoReIDNet, ModelSpec]:
    """The model and spec of a training checkpoint, weights loaded, in eval mode."""
    state = read_state(path)
    spec = ModelSpec(**state["spec"])
    model = build_model(spec)
    model.load_state_dict(state["model"])
    return model.eval(), spec
