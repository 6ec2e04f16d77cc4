"""Directory descriptors kept for one target's lifetime, and used only while still valid.

Every file of a download used to cost eight walks from the root (open and close of every
component, each time). `DirCache` keeps the descriptor of each directory walked; the walk then
checks each component with one `lstat` relative to its parent's kept descriptor and uses the
kept descriptor only if the same directory (device, inode) is still there. That is the check a
fresh walk makes, so a directory swapped for a symlink, or pollcat's staging directory swapped
for someone else's, is still found on the next operation (and walked afresh, which refuses it).

Descriptors are never closed while the target lives (another thread may be using one); one that
went stale is retired and closed with the rest when the target is garbage collected. At most
`limit` are kept: beyond that, walks open and close as before.
"""

from __future__ import annotations

import os
import stat
import threading

DEFAULT_LIMIT = 128


class DirCache:
    """Path components → (descriptor, device, inode), shared by the threads of a download."""

    def __init__(self, limit: int = DEFAULT_LIMIT):
        self.limit = limit
        self._lock = threading.Lock()
        self._fds: dict[tuple[str, ...], tuple[int, int, int]] = {}
        self._retired: list[int] = []

    def valid(self, key: tuple[str, ...], st: os.stat_result) -> int | None:
        """The kept descriptor of `key` if `st` (an lstat of its name now) is the same directory;
        a kept one that no longer matches is retired."""
        with self._lock:
            entry = self._fds.get(key)
            if entry is None:
                return None
            fd, dev, ino = entry
            if stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) == (dev, ino):
                return fd
            del self._fds[key]
            self._retired.append(fd)
            return None

    def get(self, key: tuple[str, ...]) -> int | None:
        """The kept descriptor of `key`, unchecked (for the root, which users cannot move)."""
        with self._lock:
            entry = self._fds.get(key)
        return None if entry is None else entry[0]

    def keep(self, key: tuple[str, ...], fd: int) -> bool:
        """Keep `fd` for `key`; False (the caller closes it) when full or already kept."""
        st = os.fstat(fd)
        with self._lock:
            if key in self._fds or len(self._fds) >= self.limit:
                return False
            self._fds[key] = (fd, st.st_dev, st.st_ino)
            return True

    def close(self) -> None:
        with self._lock:
            fds = [fd for fd, _, _ in self._fds.values()] + self._retired
            self._fds.clear()
            self._retired.clear()
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
