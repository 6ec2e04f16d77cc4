"""fsyncs of placed files started while the batch goes on, not all of them at its end.

A batch of thousands of small files used to end with one `sync` that opened every placed file
again by name and fsynced it: about a third of a second of a 2,000-file delivery during which
nothing else happened. The part writer now hands each placed file's descriptor over
(`LocalTarget.note_placed`), and a few threads fsync and close them while the next files
arrive; concurrent fsyncs share journal commits as before. `drain` waits for them; the batch's
`sync` still makes the directories durable and still fails if any fsync did.

At most `limit` descriptors wait at once: beyond that a placed file is fsynced by name at the
end, as before, so a slow disk cannot make pollcat hold thousands of descriptors.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import IO

log = logging.getLogger("pollcat.targetfs")

DEFAULT_LIMIT = 64


class SyncAhead:
    """A small pool that fsyncs and closes handed-over files; failures kept for `drain`."""

    def __init__(self, threads: int, limit: int = DEFAULT_LIMIT):
        self.threads, self.limit = threads, limit
        self._cond = threading.Condition()
        self._pending = 0
        self._pool: ThreadPoolExecutor | None = None
        self._failed: list[tuple[str, OSError]] = []

    def offer(self, rel: str, handle: IO[bytes]) -> bool:
        """Take `handle` (of the file placed at `rel`) over; False, and it stays the caller's,
        when `limit` fsyncs are pending already."""
        with self._cond:
            if self._pending >= self.limit:
                return False
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="pollcat-sync")
            self._pending += 1
            pool = self._pool
        pool.submit(self._fsync, rel, handle)
        return True

    def _fsync(self, rel: str, handle: IO[bytes]) -> None:
        try:
            os.fsync(handle.fileno())
        except OSError as exc:
            with self._cond:
                self._failed.append((rel, exc))
        finally:
            try:
                handle.close()
            except OSError as exc:  # nothing buffered; a close error says nothing of the bytes
                log.debug("closing %s failed: %s", rel, exc)
            with self._cond:
                self._pending -= 1
                self._cond.notify_all()

    def drain(self) -> list[tuple[str, OSError]]:
        """Wait for every fsync offered so far; the (file, error) of each that failed."""
        with self._cond:
            self._cond.wait_for(lambda: self._pending == 0)
            failed, self._failed = self._failed, []
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)  # idle: every task has ended
        return failed
