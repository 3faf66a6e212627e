"""DatasetError, and what every `python -m` command shares below harness: its parser's shape and the wrapper that
prints a DatasetError as one paragraph with exit code 2 (harness.cli builds on both; datasets never imports harness)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence


class DatasetError(ValueError):
    """Bad dataset input that the user must fix; the message names the path and the fix."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help of every command: description and examples keep their line breaks, defaults read `(default: X)`."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        # A None default is one the help names itself (a params key, "half"); a flag's False and an empty
        # repeatable list say nothing a reader needs.
        if action.default is None or action.nargs == 0 or action.default == []:
            return action.help
        return super()._get_help_string(action)


def seed_arg(text: str) -> int:
    """argparse type of a --seed: an integer >= 0, as numpy's generators take."""
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r}: a seed is an integer >= 0, e.g. 0")
    return int(text)


def command_parser(command: str, description: str, examples: Sequence[str] = ()) -> argparse.ArgumentParser:
    """An ArgumentParser for `python -m <command>` whose --help ends with the example command lines."""
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples) if examples else None
    return argparse.ArgumentParser(prog=f"python -m {command}", description=description, epilog=epilog,
                                   formatter_class=HelpFormatter)


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a `python -m datasets.X` entry point: a DatasetError prints `error: ...` and exits 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        code = main(argv)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
