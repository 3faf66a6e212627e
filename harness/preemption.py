"""SIGTERM is a preemption: Slurm, Kubernetes and spot instances send it before they take the machine back.

A command that installs `raise_on_sigterm` turns SIGTERM into a `Preempted` exception in its main
thread, which closes what it holds the way Ctrl-C does, records the runs as preempted and exits
with 143 (128 + SIGTERM), so the scheduler and the user both see what happened. Schedulers give a
grace period (Slurm's KillWait and Kubernetes' terminationGracePeriodSeconds are 30 s by default)
and then send SIGKILL: whatever the bookkeeping did not reach by then, the next --resume rebuilds
from the checkpoints and records on disk.
"""

from __future__ import annotations

import os
import signal
import threading
import time

EXIT_CODE = 128 + signal.SIGTERM
_received = threading.Event()
_at: list[float] = []


class Preempted(KeyboardInterrupt):
    """SIGTERM reached the command; tell it from Ctrl-C with `requested()`, not by its type.

    A KeyboardInterrupt because a signal often arrives while the main thread waits in ray.get, and
    Ray's C++ wait passes on only a KeyboardInterrupt from a signal handler (as a new, plain
    KeyboardInterrupt); any other exception comes out mangled into a SystemError, or is lost.
    """


def raise_on_sigterm() -> None:
    """From now on, SIGTERM raises Preempted in the main thread (call from the main thread)."""
    def handler(signum, frame) -> None:
        if _received.is_set():
            return  # one preemption: a second SIGTERM must not interrupt the bookkeeping of the first
        _received.set()  # first: a library that swallows the exception below does not hide the preemption
        _at.append(time.monotonic())
        raise Preempted()

    signal.signal(signal.SIGTERM, handler)


def interrupt_on_sigterm() -> None:
    """From now on, SIGTERM is remembered and delivered to this process as SIGINT: for code that already stops cleanly
    on Ctrl-C (Ray Tune saves its experiment and ends its trials), so a preemption ends the same way."""
    def handler(signum, frame) -> None:
        if not _received.is_set():
            _received.set()
            _at.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGINT)

    signal.signal(signal.SIGTERM, handler)


def requested() -> bool:
    """Whether SIGTERM has been received."""
    return _received.is_set()


def seconds_since() -> float | None:
    """Seconds since SIGTERM arrived (None if it has not)."""
    return time.monotonic() - _at[0] if _at else None
