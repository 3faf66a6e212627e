"""The prepared dataset a config names: its folder, manifest and class count, checked against the config once."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from datasets.integrity import verify
from harness.errors import UserError
from harness.config import DataConfig


@dataclass(frozen=True)
class PreparedDataset:
    """A prepared dataset, checked: its folder, its manifest (datasets.prepare) and its training identities."""

    directory: Path
    manifest: dict
    num_classes: int  # training identities: the classifier's outputs


def prepared_dataset(data: DataConfig) -> PreparedDataset:
    """The folder data/prepared/<data.dataset>, its manifest and class count, after checking they fit the config
    and that its files are those prepare wrote (datasets.integrity).

    The frame store holds frames at the size it was prepared at; a clip of another size would
    train and cost a different model than the one recorded, so a mismatch is an error.
    """
    directory = data.prepared_root / data.dataset
    path = directory / "manifest.json"
    if not path.exists():
        raise UserError(
            f"dataset {data.dataset!r} is not prepared: {path} is missing; run "
            f"`dvc repro prepare@{data.dataset}` or `python -m datasets.prepare --format mars|duke "
            f"--root RAW_DIR --out {directory}` first"
        )
    try:
        manifest = json.loads(path.read_text())
        size = manifest["image_size"]
        stored = (int(size["height"]), int(size["width"]))
        num_classes = int(manifest["splits"]["train"]["pids"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a manifest written by datasets.prepare ({type(e).__name__}: {e}); "
                        f"prepare the dataset again") from None
    wanted = (data.height, data.width)
    if stored != wanted:
        raise UserError(
            f"the prepared dataset {directory} holds frames of {stored[0]} x {stored[1]} pixels (H x W) but "
            f"data.height x data.width is {wanted[0]} x {wanted[1]}; prepare it again at that size (`dvc repro "
            f"prepare@{data.dataset}` after changing params, or `python -m datasets.prepare ... --height "
            f"{wanted[0]} --width {wanted[1]}`), or set data.height={stored[0]} data.width={stored[1]}"
        )
    verify(directory, manifest)  # the bytes are the ones prepare wrote: checked once per machine, then by size
    return PreparedDataset(directory, manifest, num_classes)
