"""Process-wide speed settings for CPU runs."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
_TUNED = False


MMAP_THRESHOLD = 256 << 20
"""Allocations from this size on are mmap-ed and handed back to the OS when freed. At 1 GiB,
transients just under it (gemma's [4, 256, 262k] log-probs in the CE pass) stayed in the heap
and notebook 03's process grew to 24 GB and was killed; at 256 MiB the same CE pass peaks at
5.9 GB (5.7 with glibc's defaults, 8.6 at 1 GiB)."""


def tune_allocator() -> bool:
    """Keep glibc's freed heap memory (no trimming) and serve allocations below
    `MMAP_THRESHOLD` from the heap (Linux only; idempotent), so buffers reallocated every step
    (an SAE step's 16-32 MB pre-activations and gradients, a forward's MLP buffers) stop
    page-faulting on fresh pages. Benchmarks with big dense buffers gain most (sparsify's step:
    our lead fell from 2.3x to 1.06x with the setting on). On our own steps and the gemma
    harvest, repeated runs vary by about 15 % on this machine, more than any difference between
    the settings (harvest 497-682 tok/s with it, 604 without; TopK step 74-102 ms either way).
    Returns whether the settings were applied."""
    global _TUNED
    if _TUNED:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1) == 1
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    _TUNED = ok
    return ok
