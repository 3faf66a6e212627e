"""Atomic file output: write to a temporary file beside the target, then rename into place."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from harness.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(target: Path | str):
    """Yield a temporary path next to `target`; rename it onto `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json_atomic(target: Path | str, payload: object) -> None:
    """Write `payload` as indented JSON to `target` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")


def check_writable(target: Path | str) -> None:
    """Raise UserError, before any expensive work, when `target` could not be written (its folder or an ancestor)."""
    target = Path(target)
    if target.is_dir():
        raise UserError(f"output {target} is a folder; give a file path")
    folder = target.parent
    probe = folder if folder.exists() else next((p for p in folder.parents if p.exists()), Path("."))
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {target}: {probe} is not a writable folder; choose another output path "
                        f"or fix the folder's permissions")
