"""Worker functions for the 2-process sharded evaluation tests (spawned processes import them by name)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ddp_workers import _join

SAMPLERS = ("chunk_first", "dense")


def tiny_model(state: Path | None = None) -> torch.nn.Module:
    """A width-4 NVAN for 4-frame 64 x 32 clips, with the weights saved at `state` when given."""
    from models.presets import preset_spec
    from models.video_reid import build_model

    model = build_model(preset_spec("nvan", 4, width=4))
    if state is not None:
        model.load_state_dict(torch.load(state))
    return model


def shard_worker(rank: int, world: int, port: int, directory: Path, state: Path, batch_size: int, out: Path) -> None:
    """This rank's extract_features(rank, world) of `directory`'s test set under each sampler; saves them."""
    from datasets.loaders import EvalClips
    from harness.evaluate.features import extract_features

    _join(rank, world, port)
    model = tiny_model(state)
    features = {sampler: extract_features(model, EvalClips(directory, 4, sampler), batch_size, progress=False,
                                          rank=rank, world=world)
                for sampler in SAMPLERS}
    np.savez(out / f"rank{rank}.npz", **features)
    dist.destroy_process_group()


def evaluate_worker(rank: int, world: int, port: int, overrides: list[str], state: Path, out: Path) -> None:
    """train_loop.evaluate_model on every rank, after training left rank 1's BN statistics its own; rank 0 saves."""
    import json

    from datasets.loaders import EvalClips
    from harness.params import load_config
    from harness.train.selection import evaluate_model

    _join(rank, world, port)
    config = load_config(Path(__file__).resolve().parents[1] / "params.yaml", overrides)
    model = tiny_model(state)
    if rank:  # without SyncBN, each rank's last batches moved its running statistics differently
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.add_(0.5)
    dataset = EvalClips(config.data.prepared_root / config.data.dataset, config.data.frames, config.eval.sampler)
    result = evaluate_model(model, dataset, config.eval, torch.device("cpu"), amp=config.train.amp, rank=rank, world=world)
    assert (result is None) == (rank != 0)
    if result is not None:
        (out / "metrics.json").write_text(json.dumps(result[0]))
    dist.destroy_process_group()
