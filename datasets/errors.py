"""DatasetError, and the CLI wrapper that prints it as one paragraph with exit code 2."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable


class DatasetError(ValueError):
    """Bad dataset input that the user must fix; the message names the path and the fix."""


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a `python -m datasets.X` entry point: a DatasetError prints `error: ...` and exits 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        code = main(argv)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
