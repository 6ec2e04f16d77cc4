"""On-the-fly zip output for IDS ``getData``, plus the ids.storage_file ZipMapper entry names.

Why on the fly: the IDS writes its zip straight into the HTTP response (``ZipOutputStream`` over
the servlet stream), so a multi-GiB download neither sits in memory nor on disk and the first
bytes arrive at once. Python's ``zipfile`` does the same when handed an unseekable sink: it
writes each entry's sizes and CRC in a data descriptor after the data, like Java does for
DEFLATED entries. The generator below drains that sink whenever it holds >= 1 MiB.

Entry timestamps are the local time at which each entry is started, as Java stamps entries
without an explicit time, so two requests for the same preparedId may differ in their header
bytes (the resume caveat of wire reference §1.4, reproduced on purpose).
"""

from __future__ import annotations

import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from urllib.parse import quote_plus

CHUNK = 1 << 20


def java_url_encode(text: str) -> str:
    """``URLEncoder.encode(s, "UTF-8")``: form encoding, keeps ``A-Za-z0-9.-*_``, encodes ``~``."""
    return quote_plus(text, safe="*").replace("~", "%7E")


def zip_entry_name(facility: str, investigation: str, visit_id: str, dataset: str,
                   datafile: str) -> str:
    """ids.storage_file ``ZipMapper.getFullEntryName``; the datafile name is not encoded."""
    parts = [java_url_encode(p) for p in (facility, investigation, visit_id, dataset)]
    return "ids/" + "/".join(parts) + "/" + datafile


class _Sink:
    """Unseekable byte sink: ``zipfile`` sees no ``tell``/``seek`` and streams accordingly."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> int:
        if data:
            self._parts.append(bytes(data))
            self.size += len(data)
        return len(data)

    def flush(self) -> None:
        """zipfile calls flush; nothing is buffered below us."""

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts = []
        self.size = 0
        return out


Entry = tuple[str, int, Callable[[], Iterable[bytes]]]  # (name, size, chunk source)


def zip_stream(entries: Iterable[Entry], compress: bool, chunk: int = CHUNK) -> Iterator[bytes]:
    """Yield a zip of `entries` in pieces of about `chunk` bytes.

    ``compress=False`` is DEFLATE at level 0 (the IDS's ``setLevel(0)``), not STORED; a later
    entry with an already used name is skipped silently, as ZipOutputStream's duplicate-entry
    error is swallowed by the IDS.
    """
    level = None if compress else 0
    sink = _Sink()
    seen: set[str] = set()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level,
                         allowZip64=True) as zf:
        for name, size, source in entries:
            if name in seen:
                continue
            seen.add(name)
            info = zipfile.ZipInfo(name, date_time=time.localtime()[:6])
            info.compress_type = zipfile.ZIP_DEFLATED
            info.file_size = size  # lets zipfile pick zip64 headers up front for big entries
            _set_level(info, level)
            with zf.open(info, "w") as dest:
                for piece in source():
                    dest.write(piece)
                    if sink.size >= chunk:
                        yield sink.take()
            if sink.size >= chunk:
                yield sink.take()
    tail = sink.take()
    if tail:
        yield tail


def _set_level(info: zipfile.ZipInfo, level: int | None) -> None:
    """zipfile's open("w") takes the level from the ZipInfo; the attribute was renamed in 3.13."""
    if hasattr(info, "compress_level"):
        info.compress_level = level
    else:
        info._compresslevel = level


def skip_bytes(stream: Iterable[bytes], offset: int) -> Iterator[bytes]:
    """``RangeOutputStream``: drop the first `offset` bytes of a regenerated stream."""
    for piece in stream:
        if offset <= 0:
            yield piece
        elif len(piece) <= offset:
            offset -= len(piece)
        else:
            yield piece[offset:]
            offset = 0
