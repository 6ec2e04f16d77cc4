"""Hand one zip entry's chunks from the thread that reads the zip to the thread that stages it.

Why: with one thread reading the zip and writing each entry, the socket waited at every entry's
end until the entry's last chunks were written and its part file closed (a quarter of the
reader's time on 8 MiB entries). With a feed per entry, the reader goes on to the next entry
while the staging thread finishes the last one.

Memory stays bounded: a feed holds at most `depth` chunks, and the reader fills the next
entry's feed only while the staging thread works on the previous one. Errors keep their owner:
an error of the reader (a broken stream, a size that disagrees) is raised in the staging thread
at the point the data stopped (`fail`), so the part file is removed there; an error of the
staging thread (a full disk) is its future's, and the feed is drained so the reader never waits
for a consumer that has stopped.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from dataclasses import dataclass

DEFAULT_DEPTH = 8


@dataclass(frozen=True)
class _End:
    declared_crc: int | None


@dataclass(frozen=True)
class _Failed:
    error: BaseException


class EntryFeed:
    """An iterable of one entry's chunks, filled by another thread."""

    def __init__(self, depth: int = DEFAULT_DEPTH) -> None:
        self._queue: queue.Queue[bytes | _End | _Failed] = queue.Queue(maxsize=depth)
        self.declared_crc: int | None = None
        self._over = False

    # the reading thread
    def put(self, data: bytes) -> None:
        self._queue.put(data)

    def end(self, declared_crc: int | None) -> None:
        """The entry was read whole; `declared_crc` is the CRC32 its zip declares."""
        self._queue.put(_End(declared_crc))

    def fail(self, error: BaseException) -> None:
        """The entry cannot be read to its end: the consumer gets `error` in place of data."""
        self._queue.put(_Failed(error))

    # the staging thread
    def __iter__(self) -> Iterator[bytes]:
        while not self._over:
            item = self._queue.get()
            if isinstance(item, _End):
                self._over = True
                self.declared_crc = item.declared_crc
                return
            if isinstance(item, _Failed):
                self._over = True
                raise item.error
            yield item

    def drain(self) -> None:
        """Take what is left (a consumer that stopped early), so the reader never blocks."""
        while not self._over:
            item = self._queue.get()
            if isinstance(item, _End | _Failed):
                self._over = True
                if isinstance(item, _End):
                    self.declared_crc = item.declared_crc
