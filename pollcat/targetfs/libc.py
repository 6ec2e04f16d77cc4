"""C library functions Python's `os` does not expose (`sync_file_range`, `syscall`).

ctypes calls release the GIL while they run; `use_errno` makes `ctypes.get_errno()` report the
call's own errno. Each caller gets its own function object, so setting `argtypes` on it affects
no other.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys


def function(name: str):  # noqa: ANN201 - a ctypes function or None
    """libc's `name`, or None where there is no such function (not Linux, not glibc/musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
