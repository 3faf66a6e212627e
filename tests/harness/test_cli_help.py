"""Every command's --help: examples a user can copy, help text on every option, and defaults shown one way."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ("datasets.synthetic", "datasets.sources", "datasets.prepare", "harness.train", "harness.evaluate", "harness.cost",
            "harness.bench", "harness.report", "harness.sweep", "harness.gpu_check",
            "harness.plan")

# Run in one fresh process from the project root: each command's main with --help, as `python -m` would run it, and
# the parser it built (recorded as it parses); then every example's arguments through that parser and, for the
# harness commands, its --params and --set through the config's validation.
PROBE = r"""
import argparse, contextlib, importlib, importlib.util, io, json, shlex, sys

from harness.errors import ConfigError
from harness.params import load_config

built = {}
parse_known_args = argparse.ArgumentParser.parse_known_args


def recording(self, args=None, namespace=None):
    built.setdefault(self.prog, self)
    return parse_known_args(self, args, namespace)


argparse.ArgumentParser.parse_known_args = recording
found = {}
for command in sys.argv[2:]:
    package = importlib.util.find_spec(command).submodule_search_locations is not None
    main = importlib.import_module(f"{command}.__main__" if package else command).main
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        try:
            main(["--help"])
            code = "returned"
        except SystemExit as e:
            code = e.code
    parser = built[f"python -m {command}"]
    formatter = parser._get_formatter()
    options = [{"flags": a.option_strings, "help": a.help, "nargs": a.nargs, "default": None if a.default is None
                else repr(a.default), "expanded": formatter._expand_help(a) if a.help else ""}
               for a in parser._actions if a.option_strings and a.default != argparse.SUPPRESS]
    lines = shown.getvalue().partition("\nexamples:\n")[2].splitlines()
    examples = [line.strip() for line in lines if line.startswith("  python -m ")]
    failures = []
    for example in examples:
        words = shlex.split(example)[3:]
        try:
            with contextlib.redirect_stderr(io.StringIO()) as err:
                args = parser.parse_args(words)
            if hasattr(args, "overrides"):
                load_config(args.params, args.overrides)
        except SystemExit:
            failures.append(f"{example}: {err.getvalue().strip()}")
        except ConfigError as e:
            failures.append(f"{example}: {e}")
    found[command] = {"code": code, "help": shown.getvalue(), "options": options, "examples": examples,
                      "failures": failures, "formatters": [c.__name__ for c in parser.formatter_class.__mro__]}
with open(sys.argv[1], "w") as f:
    json.dump(found, f)
"""


@pytest.fixture(scope="module")
def helps(tmp_path_factory) -> dict:
    """What each command's --help printed, its parser's options, its examples and any that did not parse."""
    out = tmp_path_factory.mktemp("help") / "help.json"
    done = subprocess.run([sys.executable, "-c", PROBE, str(out), *COMMANDS], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("command", COMMANDS)
def test_help_ends_with_examples_that_parse(helps, command):
    found = helps[command]
    assert found["code"] == 0 and found["help"].startswith(f"usage: python -m {command} ")
    assert {"RawDescriptionHelpFormatter", "ArgumentDefaultsHelpFormatter"} <= set(found["formatters"])
    assert "\nexamples:\n" in found["help"]
    assert len(found["examples"]) >= 2
    assert all(e == f"python -m {command}" or e.startswith(f"python -m {command} ") for e in found["examples"])
    assert found["failures"] == []


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help_and_shows_its_default(helps, command):
    for option in helps[command]["options"]:
        assert (option["help"] or "").strip(), f"{command} {option['flags']} has no help text"
        # A flag's False and a repeatable option's empty list are no defaults to show; None is named in the help.
        if option["default"] not in (None, "False", "[]") and option["nargs"] != 0:
            assert "(default: " in option["expanded"], f"{command} {option['flags']}: {option['expanded']}"
        else:
            assert option["expanded"].count("(default: ") <= 1, f"{command} {option['flags']}: {option['expanded']}"
