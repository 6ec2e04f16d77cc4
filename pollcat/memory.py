"""Stream through memory the process already has, not through fresh pages for every chunk.

pollcat moves data in 1 MiB chunks: socket reads, chunked-HTTP joins, inflated zip pieces. glibc
serves every allocation above its mmap threshold (128 KiB at start) with its own `mmap` and
gives it back with `munmap` when freed, and trims freed memory at the top of its heaps back to
the kernel. Each new chunk then costs 256 page faults and the zeroing of fresh pages. On this
project's VM a prepared-zip sweep of 512 MiB (`bench/zipsrc.py` set-up) took about 140,000 page
faults and 0.71-0.76 s of system time until glibc's own adjustment caught up two sweeps later;
with the settings below under 3,500 faults and 0.37-0.45 s, and the sweep 1.04 s → 0.80 s.
Raising both thresholds keeps chunks on the heap, where a freed chunk is reused by the next.

Memory is not held for ever: the trim threshold still returns free heap tops above 64 MiB, and
the peak stays what the chunks in flight need (that process peaked at 130 MB instead of 103 MB;
the RSS benchmark measures a 4 GiB delivery). Only glibc has `mallopt`; elsewhere this does
nothing.
"""

from __future__ import annotations

import ctypes
import logging
import threading

from pollcat.targetfs import libc

log = logging.getLogger("pollcat.memory")

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for its dynamic threshold (64-bit)
TRIM_THRESHOLD = 64 << 20

_lock = threading.Lock()
_done: bool | None = None


def reuse_chunk_memory() -> bool:
    """Set glibc's thresholds once per process; whether they are set."""
    global _done
    with _lock:
        if _done is None:
            _done = _set_thresholds()
        return _done


def _set_thresholds() -> bool:
    mallopt = libc.function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
          and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    if not ok:
        log.debug("mallopt refused the thresholds: chunks keep their own mappings")
    return ok
