"""Tunes the C allocator (glibc's malloc) of a process that carries large messages.

Each message of a megabyte or so that crosses a tunnel is copied into a few fresh
buffers of that size (the frame, its encoding, gRPC's own copy). With glibc's defaults
such a buffer is either mapped afresh (``mmap``) or carved from the top of the heap,
which is given back to the kernel (trimmed) as soon as it is freed; either way the next
buffer touches new pages, and the kernel faults and zeroes them one by one. Measured on
the benchmark's forward tunnel streaming 1 MiB messages, that page-fault work was about
two thirds of the CPU spent per MiB.

:func:`tune_for_large_messages` keeps such buffers in the heap: buffers up to
``mmap_threshold`` bytes come from the heap, and up to ``trim_threshold`` bytes of freed
heap stay mapped for the next ones (at the price of that much resident memory, at
most, after a burst). The ``grpctunnel`` command calls it at start-up; a process using
the library can call it too, or set the same through glibc's environment variables
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``), which it leaves alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

# a 1 MiB chunk or message (and the window of 4 MiB between our peers) stays in the heap;
# an 8 MiB message is mapped on its own, as glibc would
DEFAULT_MMAP_THRESHOLD = 4 * 1024 * 1024
DEFAULT_TRIM_THRESHOLD = 32 * 1024 * 1024
_ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def tune_for_large_messages(
    mmap_threshold: int = DEFAULT_MMAP_THRESHOLD,
    trim_threshold: int = DEFAULT_TRIM_THRESHOLD,
) -> bool:
    """Sets glibc's mmap and trim thresholds (see the module's documentation). Returns
    whether it did: not on other C libraries or platforms, nor when the process's
    environment already sets either threshold (the user's choice stands)."""
    if not sys.platform.startswith("linux") or any(name in os.environ for name in _ENVIRONMENT):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt answers 1 on success; the mmap threshold first, as setting the trim
    # threshold stops glibc adjusting the other by itself
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )


__all__ = ["DEFAULT_MMAP_THRESHOLD", "DEFAULT_TRIM_THRESHOLD", "tune_for_large_messages"]
