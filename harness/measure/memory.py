"""Resident memory of this process (Linux /proc/self/status): its current size and its peak since a reset.

Units: rss_kb reads KiB, as /proc reports them; peak_rss_mib returns MiB.
"""

from __future__ import annotations

import ctypes
import logging

# The cost command's logger, whose name these warnings have always carried, whichever command measures.
log = logging.getLogger("harness.cost")


def rss_kb(field: str) -> int:
    """The KiB a /proc/self/status `field` (VmRSS, VmHWM, VmSize, ...) holds now."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> int | None:
    """Hand freed heap pages back to the OS and restart the peak-RSS counter; resident KiB, or None."""
    # Without this the forward reuses pages that building and fusing the model freed (RSS does not
    # grow), and VmHWM may still hold that earlier peak: ResNet-50 at 8x256x128 read 16 MiB, not 93.
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc only
    if trim is not None:
        trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux >= 4.0: reset VmHWM to the current RSS
    except OSError as e:
        log.warning("cannot reset the peak RSS (%s); peak memory is not measured", e)
        return None
    return rss_kb("VmRSS")


def peak_rss_mib(since_kib: int) -> float:
    """Peak resident memory (MiB) above `since_kib`, the value reset_peak_rss returned."""
    return (rss_kb("VmHWM") - since_kib) / 1024
