"""Progress of a long loop: a tqdm bar on a terminal, otherwise an INFO log line every so often.

tqdm draws nothing useful where stderr is not a terminal (DVC stages, cluster job logs), and a
redrawn bar in a log file is noise; there a line every `interval_s` seconds says how far the
work got and how long it has left. Imports nothing of harness, which uses it too.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable

from tqdm import tqdm

from datasets.errors import DatasetError

log = logging.getLogger(__name__)

INTERVAL_ENV = "NVAN_PROGRESS_INTERVAL_S"
DEFAULT_INTERVAL_S = 30.0


def interval_from_env() -> float:
    """Seconds between log lines: $NVAN_PROGRESS_INTERVAL_S, else 30."""
    text = os.environ.get(INTERVAL_ENV, "")
    if not text:
        return DEFAULT_INTERVAL_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise DatasetError(f"environment variable {INTERVAL_ENV}={text!r} must be a number of seconds >= 0 between "
                           f"progress lines (0 logs every update); set it to e.g. 30, or unset it for the default "
                           f"{DEFAULT_INTERVAL_S:g}.")
    return seconds


def duration(seconds: float) -> str:
    """A rough human duration: '45 s', '9 min', '2.5 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """Counts `total` `unit` (a plural noun, e.g. "frames") done under `desc`; use as a context manager.

    On a terminal (stderr a TTY, or `terminal=True`) a tqdm bar; otherwise an INFO line at most
    every `interval_s` seconds (None: $NVAN_PROGRESS_INTERVAL_S, else 30) and a last one when the
    block completes. `clock` (seconds) is injectable for tests.
    """

    def __init__(self, total: int, desc: str, unit: str, interval_s: float | None = None,
                 terminal: bool | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.desc, self.unit, self.done = total, desc, unit, 0
        self.interval_s = interval_from_env() if interval_s is None else interval_s
        self.clock = clock
        self.started = self.logged = clock()
        terminal = sys.stderr.isatty() if terminal is None else terminal
        self.bar = tqdm(total=total, desc=desc, unit=unit) if terminal else None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if exc_type is None:
            self.close()
        elif self.bar is not None:  # after an error, its message is the last word: no final line
            self.bar.close()

    def close(self) -> None:
        """End the bar, or log the final line."""
        if self.bar is not None:
            self.bar.close()
        else:
            log.info("%s", self.line(final=True))

    def update(self, n: int) -> None:
        """Count `n` more units done."""
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = self.clock()
        if now - self.logged >= self.interval_s:
            self.logged = now
            log.info("%s", self.line())

    def line(self, final: bool = False) -> str:
        """'desc: done/total unit (percent), rate unit/s, about T left', or '... in T' when `final`."""
        elapsed = self.clock() - self.started
        percent = 100.0 * self.done / self.total if self.total else 100.0
        text = f"{self.desc}: {self.done:,}/{self.total:,} {self.unit} ({percent:.1f}%)"
        if final:
            text += f" in {duration(elapsed)}"
        if elapsed > 0 and self.done > 0:
            rate = self.done / elapsed
            text += f", {rate:,.0f} {self.unit}/s"
            if not final:
                text += f", about {duration((self.total - self.done) / rate)} left"
        return text
