"""What every `python -m harness.X` command shares: a parser with --params/--set and examples, and user-error exits."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from datasets.errors import command_parser
from harness.config import Config
from harness.errors import USER_ERRORS
from harness.params import DEFAULT_PARAMS, load_config
from harness.redact import RedactingFilter, redact


def config_parser(command: str, description: str, examples: Sequence[str] = ()) -> argparse.ArgumentParser:
    """An ArgumentParser for `python -m <command>` with the shared --params and --set options, whose --help ends
    with the example command lines."""
    parser = command_parser(command, description, examples)
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS,
                        help="params file; a default named by a key (e.g. cost.presets) is that key's value in it")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a param, YAML-typed (repeatable), e.g. --set model.non_local=[0,2,3,0]",
    )
    return parser


def load_from_args(args: argparse.Namespace) -> Config:
    """The validated config named by --params and --set."""
    return load_config(args.params, args.overrides)


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a CLI entry point: user errors print one paragraph and exit 2, bugs keep their traceback. Nothing it
    logs or prints as an error shows credentials of a URI."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    try:
        code = main(argv)
    except USER_ERRORS as e:
        print(f"error: {redact(str(e))}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
