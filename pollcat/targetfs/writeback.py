"""Early writeback for part files: the final fsync stays short, dirty memory bounded.

Without it the kernel keeps up to `dirty_ratio` of RAM dirty and the fsync before placement
writes gigabytes in one go while nothing else happens. With it, every `window` bytes written
start their writeback at once (`SYNC_FILE_RANGE_WRITE`, asynchronous) and the window `depth`
windows back is waited for, so the disk works while the network does and at most `depth` + 1
windows (72 MiB) are dirty or in flight. The depth is the disk's queue: waiting for the window
just before (depth 1) kept two windows in flight and wrote 1 GiB at 1.72-1.83 GB/s on the
project's VM, depth 8 at 2.24-2.30 GB/s, and one fsync of it all at 1.58-1.61 GB/s (same run,
three rounds each, `write` of 256 KiB slices from memory).

Python has no `os.sync_file_range`, so it is called through libc (ctypes releases the GIL).
Where it does not exist (not Linux, not glibc/musl), `Writeback` does nothing and the final
fsync does all the work, as before. This never replaces the fsync: it only makes it short.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Callable

from pollcat.targetfs import libc

log = logging.getLogger("pollcat.targetfs")

WAIT_BEFORE, WRITE, WAIT_AFTER = 1, 2, 4
DEFAULT_WINDOW = 8 << 20
DEFAULT_DEPTH = 8


def _load() -> Callable[[int, int, int, int], None] | None:
    fn = libc.function("sync_file_range")
    if fn is None:
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int

    def call(fd: int, offset: int, nbytes: int, flags: int) -> None:
        if fn(fd, offset, nbytes, flags) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return call


_sync_file_range = _load()

class Writeback:
    """Start writeback of each full `window` of a file written sequentially from `start`."""

    def __init__(self, fd: int, start: int = 0, window: int = DEFAULT_WINDOW,
                 depth: int = DEFAULT_DEPTH):
        self.fd, self.window, self.depth = fd, window, depth
        self.next = start - start % window + window  # first window end not yet started
        self.enabled = _sync_file_range is not None

    def advance(self, offset: int) -> None:
        """The file is written up to `offset`: start the finished windows, wait for the one
        `depth` windows back.

        A refusal (a filesystem without support, EINVAL) turns early writeback off for this
        file; the fsync before placement still makes the bytes durable.
        """
        while self.enabled and offset >= self.next:
            begin = self.next - self.window
            try:
                assert _sync_file_range is not None
                _sync_file_range(self.fd, begin, self.window, WRITE)
                older = begin - self.depth * self.window
                if older >= 0:
                    _sync_file_range(self.fd, older, self.window,
                                     WAIT_BEFORE | WRITE | WAIT_AFTER)
            except OSError as exc:
                log.debug("sync_file_range refused (%s): leaving writeback to fsync", exc)
                self.enabled = False
            self.next += self.window

    def start_rest(self) -> None:
        """Start (without waiting) the writeback of everything not started yet: the fsync that
        comes later, for a whole batch, then finds most of it on its way to the disk."""
        if not self.enabled:
            return
        begin = self.next - self.window
        try:
            assert _sync_file_range is not None
            _sync_file_range(self.fd, begin, 0, WRITE)  # 0: to the end of the file
        except OSError as exc:
            log.debug("sync_file_range refused (%s): leaving writeback to fsync", exc)
            self.enabled = False
