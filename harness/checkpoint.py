"""Training checkpoints: one `state.pt` of plain data and tensors, loaded with torch's weights-only unpickler.

A checkpoint may come from shared storage or from someone else, and a full pickle can run any
code when loaded. So everything in `state.pt` is a dict, list, tuple, str, int, float, bool,
None or tensor (the spec as a dict, numpy's RNG state as a tensor), and every load passes
`weights_only=True`, which refuses anything else before it is built.
"""

from __future__ import annotations

import random
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.errors import UserError
from models.checkpoints import safe_load
from models.spec import ModelSpec
from models.video_reid import VideoReIDNet, build_model

STATE_FILE = "state.pt"
EPOCH_FILE = "epoch.json"  # in each checkpoint folder, beside state.pt: the numbers reported for its epoch
QUERIES_FILE = "queries.parquet"  # likewise: the per-query outcomes of the best evaluation so far
FORMAT = "nvan-bench state 2"


def rng_state() -> dict[str, Any]:
    """The Python, numpy and torch RNG states as plain data and tensors, to restore on resume."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)}}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore RNG states saved by `rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])


def save_state(directory: Path, model: nn.Module, spec: ModelSpec, **training: Any) -> Path:
    """Write `directory/state.pt` with the spec, the (unwrapped) model weights and `training` state (plain data)."""
    path = Path(directory) / STATE_FILE
    weights = getattr(model, "module", model).state_dict()
    torch.save({"format": FORMAT, "spec": asdict(spec), "model": weights, **training}, path)
    return path


def read_state(path: Path, shown: str | None = None) -> dict[str, Any]:
    """The dict saved by `save_state`; `path` is the file or the checkpoint folder holding it.

    One-paragraph user errors (UserError, CheckpointError) for a missing file, one that is not a
    checkpoint, and one that holds Python objects beyond plain data (refused, never built). They name
    the file at `shown` (the checkpoint folder where the user keeps it) when `path` is a local copy.
    """
    path = Path(path)
    file = path / STATE_FILE if path.is_dir() else path
    if shown is not None:
        return _read_state(file, f"{str(shown).rstrip('/')}/{STATE_FILE}")
    return _read_state(file, str(file))


def _read_state(file: Path, shown: str) -> dict[str, Any]:
    if not file.is_file():
        raise UserError(f"checkpoint {shown} does not exist; pass a {STATE_FILE} written by harness.train "
                        f"or the checkpoint folder that holds it")
    state = safe_load(file, f"a {STATE_FILE} written by harness.train (or an official STE-NVAN .pth with --official)",
                      shown)
    if not isinstance(state, dict) or "spec" not in state or "model" not in state:
        raise UserError(f"{shown} is not a harness.train checkpoint (no 'spec' and 'model' entries); "
                        f"for an official STE-NVAN .pth use --official")
    if state.get("format") != FORMAT:
        raise UserError(f"{shown} was written by an older harness.train ({state.get('format', 'format 1')!r}, "
                        f"expected {FORMAT!r}); train it again")
    return state


def spec_of(state: dict[str, Any], file: Path | str) -> ModelSpec:
    """The ModelSpec saved in a checkpoint's state; UserError if it does not describe a model."""
    known = {f.name for f in fields(ModelSpec)}
    if not isinstance(state["spec"], dict) or set(state["spec"]) - known:
        raise UserError(f"checkpoint {file} has a spec this version does not know ({state['spec']!r}); train it again")
    try:
        return ModelSpec(**state["spec"])
    except (TypeError, ValueError) as e:
        raise UserError(f"checkpoint {file} has an invalid spec: {e}; train it again") from None


def load_model(path: Path) -> tuple[VideoReIDNet, ModelSpec]:
    """The model and spec of a training checkpoint, weights loaded, in eval mode."""
    state = read_state(path)
    spec = spec_of(state, path)
    model = build_model(spec)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"checkpoint {path}: the weights do not fit its spec ({first}); train it again") from None
    return model.eval(), spec
