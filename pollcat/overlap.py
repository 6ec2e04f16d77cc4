"""Overlap reading a stream with consuming it: the network and the disk work at the same time.

A single thread that reads, checksums and writes in strict sequence leaves the socket idle while
it writes and the disk idle while it reads. `overlapped` reads in the calling thread and hands
each chunk to `consume` on a second thread through a short queue. The socket read, `zlib.crc32`
(on buffers over 5 KiB) and file writes all release the GIL, so the two really run in parallel.

Memory stays bounded: at most `depth` chunks wait in the queue. Errors keep their meaning: an
error of the reader (a broken connection) propagates after every chunk read before it has been
consumed, so the consumer's offset is exact for a resume; an error of the consumer (a full disk)
stops the reader at its next chunk and is raised in its place.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable

DEFAULT_DEPTH = 8
_END = object()


class _Consumer(threading.Thread):
    def __init__(self, consume: Callable[[bytes], None], depth: int):
        super().__init__(name="pollcat-writer", daemon=True)
        self.consume = consume
        self.inbox: queue.Queue[object] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None

    def run(self) -> None:
        while True:
            item = self.inbox.get()
            if item is _END:
                return
            if self.error is None:  # after an error, drain so the reader never blocks
                try:
                    self.consume(item)  # type: ignore[arg-type]
                except BaseException as exc:  # noqa: BLE001 - handed to the reader thread
                    self.error = exc


def overlapped(chunks: Iterable[bytes], consume: Callable[[bytes], None], *,
               depth: int = DEFAULT_DEPTH) -> None:
    """`consume(chunk)` for every chunk, on another thread, while the next chunks are read."""
    worker = _Consumer(consume, depth)
    worker.start()
    try:
        for data in chunks:
            worker.inbox.put(data)
            if worker.error is not None:
                break
    finally:
        worker.inbox.put(_END)
        worker.join()
        if worker.error is not None:
            raise worker.error
