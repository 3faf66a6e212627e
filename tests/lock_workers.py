"""Drivers racing for one run's lock, for the lock takeover test (forked from a server that imported this once)."""

from __future__ import annotations

from harness.errors import UserError
from harness.train.run_dir import RunLock


def race(run_dir: str, rounds: int, barrier, wins) -> None:
    """Each round: wait until the stale lock is laid and every racer is ready, try to take the lock, wait until every
    racer has tried (so the winner's lock is there for all of them to see), then let it go."""
    try:
        for round_ in range(rounds):
            barrier.wait()
            lock = RunLock(run_dir, "raced")
            try:
                lock.__enter__()
            except UserError as refused:
                if "being trained by" not in str(refused) and "being started by" not in str(refused):
                    raise  # refused for another reason (the storage failed): not a lost race
                lock = None
            else:
                with wins.get_lock():
                    wins[round_] += 1
            barrier.wait()
            if lock is not None:
                lock.__exit__(None, None, None)
            barrier.wait()
    except BaseException:
        barrier.abort()  # the others fail at once instead of waiting for a racer that is gone
        raise
