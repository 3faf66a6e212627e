"""The prepared dataset a config names: its folder and manifest, checked against the config."""

from __future__ import annotations

import json
from pathlib import Path

from datasets.integrity import verify
from harness.cli import UserError
from harness.config import Config


def prepared_dataset(config: Config) -> tuple[Path, dict]:
    """The folder data/prepared/<data.dataset> and its manifest, after checking they fit the config and that its
    files are those prepare wrote (datasets.integrity).

    The frame store holds frames at the size it was prepared at; a clip of another size would
    train and cost a different model than the one recorded, so a mismatch is an error.
    """
    directory = config.data.prepared_root / config.data.dataset
    path = directory / "manifest.json"
    if not path.exists():
        raise UserError(
            f"dataset {config.data.dataset!r} is not prepared: {path} is missing; run "
            f"`dvc repro prepare@{config.data.dataset}` or `python -m datasets.prepare --format mars|duke "
            f"--root RAW_DIR --out {directory}` first"
        )
    try:
        manifest = json.loads(path.read_text())
        size = manifest["image_size"]
        stored = (int(size["height"]), int(size["width"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a manifest written by datasets.prepare ({type(e).__name__}: {e}); "
                        f"prepare the dataset again") from None
    wanted = (config.data.height, config.data.width)
    if stored != wanted:
        raise UserError(
            f"the prepared dataset {directory} holds frames of {stored[0]} x {stored[1]} pixels (H x W) but "
            f"data.height x data.width is {wanted[0]} x {wanted[1]}; prepare it again at that size (`dvc repro "
            f"prepare@{config.data.dataset}` after changing params, or `python -m datasets.prepare ... --height "
            f"{wanted[0]} --width {wanted[1]}`), or set data.height={stored[0]} data.width={stored[1]}"
        )
    verify(directory, manifest)  # the bytes are the ones prepare wrote: checked once per machine, then by size
    return directory, manifest
