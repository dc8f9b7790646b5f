"""Process-wide speed settings for CPU runs."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
_TUNED = False


def tune_allocator() -> bool:
    """Make glibc keep freed memory instead of returning it to the OS (Linux only; idempotent).

    By default every tensor over 32 MiB-ish is mmap-ed and unmapped on free, so a training step
    or forward that reallocates its big buffers page-faults on every fresh page. Measured here
    (2 cores): gemma-3-270m harvest 502 -> 676 tok/s, TopK SAE step (8192 x 640, batch 512)
    86 -> 74 ms, 146 -> 108 ms with AuxK. The cost: the process's RSS stays at its peak.
    Returns whether the settings were applied.
    """
    global _TUNED
    if _TUNED:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1) == 1
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    _TUNED = ok
    return ok
