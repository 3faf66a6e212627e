"""What an error message may echo of the user's input: bounded, however large the input is."""

from __future__ import annotations

import reprlib

MAX_CHARS = 300  # of any echoed value or problem list
_REPR = reprlib.Repr()  # Python 3.11's Repr takes no arguments: its limits are attributes
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 3, 6, 6, 6, 6
_REPR.maxstring = _REPR.maxother = 80


def echo(value: object) -> str:
    """A repr of `value` that stops at a few levels and elements (never walks a whole alias-expanded tree)."""
    return short(_REPR.repr(value))


def short(text: object, limit: int = MAX_CHARS) -> str:
    """`text` cut to `limit` characters, saying how much was cut."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"
