"""Keep glibc from handing freed tensor memory back to the kernel between training steps.

Each MADE step allocates a few masked weight matrices (W * mask, 1.5 MB for a 784 x 500
layer) and frees them after the backward pass. Under glibc's default, adaptive malloc
settings, whether that recycles heap memory or makes the heap's top shrink and regrow
every step depends on the process's allocation history. In the regrowing case a
2 x 500, 32-mask MNIST step takes about 400 page faults, each zero-filling a fresh 4 KiB
page: 10-20% of MADE's throughput against an unmasked MLP of the same shape in
``python -m benchmarks.throughput``, and the same in a plain training loop
(tests/test_allocator.py). Fixing the mmap threshold at 32 MiB and keeping up to 1 GiB
of free heap brings the faults to about zero whatever the history.

The setting is process-wide, as every allocator setting is. ``Trainer`` applies it once;
set ``MADE_MALLOC_TUNING=0`` to leave the allocator alone. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
"""Allocations at least this large still get their own mmap (glibc's largest adaptive value)."""

TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024
"""Free space at the heap's top that glibc keeps instead of returning it to the kernel."""

OPT_OUT_VARIABLE = "MADE_MALLOC_TUNING"

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3

_applied: bool | None = None


def opted_out(variable: str) -> bool:
    """Whether environment ``variable`` turns a made_core optimisation off (0, false, no or off)."""
    return os.environ.get(variable, "1").strip().lower() in {"0", "false", "no", "off"}


def keep_freed_memory() -> bool:
    """Apply the malloc settings above once per process; True when they are in force."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if opted_out(OPT_OUT_VARIABLE):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; both must hold for the fix to work.
    return mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
