"""On-the-fly zip output for IDS ``getData`` as ``java.util.zip.ZipOutputStream`` writes it, plus
the ids.storage_file ZipMapper entry names.

Why on the fly: the IDS writes its zip straight into the HTTP response (``ZipOutputStream`` over
the servlet stream), so a multi-GiB download neither sits in memory nor on disk and the first
bytes arrive at once. The generator below yields the stream in pieces of about 1 MiB.

Why not Python's ``zipfile``: its streaming form is not Java's (a ZIP64 extra in the local header
of big entries, the UTF-8 flag only on non-ASCII names: sim-fidelity §14), and at
``compress=false`` it ran every byte through zlib's level-0 deflate and four copies, so the
simulator, not the client, set the pace of every zip benchmark. The bytes here follow OpenJDK's
``ZipOutputStream`` (``putNextEntry``, ``writeLOC``, ``writeEXT``, ``writeCEN``, ``writeEND``):
- every entry DEFLATED with flags 0x0808 (sizes and CRC32 in a signed data descriptor after the
  data; UTF-8 names), version 20, no extra field, zeros for CRC and sizes in the local header;
- a descriptor with 8-byte sizes once an entry's size or compressed size reaches 0xFFFFFFFF, the
  central directory's ZIP64 extra (size, csize, offset, as needed, version 45) and the ZIP64 end
  records when the directory's offset, length or entry count needs them.
``compress=false`` is the IDS's ``setLevel(0)``: DEFLATE made of stored blocks. They are written
here directly (up to 65,535 bytes each, the last one final, as zlib's level 0 cuts them; an empty
entry is one empty final block), with one copy per output piece; ``compress=true`` is zlib's
default level, Java's ``Deflater.DEFAULT_COMPRESSION``.

Entry timestamps are the local time at which each entry is started, as Java stamps entries
without an explicit time, so two requests for the same preparedId may differ in their header
bytes (the resume caveat of wire reference §1.4, reproduced on purpose).
"""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import quote_plus

try:  # Java's CRC32 is a CPU intrinsic; zlib's would make the simulator the bottleneck
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - isal is a dependency; zlib gives the same values
    from zlib import crc32

CHUNK = 1 << 20
STORED_MAX = 0xFFFF  # a stored deflate block's LEN is 16 bits
MAGIC32 = 0xFFFFFFFF  # ZIP64_MAGICVAL: this value or more goes to a ZIP64 field
MAGIC_COUNT = 0xFFFF
DEFLATED = 8
VERSION = 20  # version(e) for DEFLATED
VERSION_ZIP64 = 45
FLAGS = 0x0808  # bit 3: sizes in the data descriptor; bit 11: UTF-8 name
DEFAULT_LEVEL = 6  # Deflater.DEFAULT_COMPRESSION (-1) is zlib's default

_LOCAL = struct.Struct("<4sHHHIIIIHH")
_CENTRAL = struct.Struct("<4sHHHHIIIIHHHHHII")
_END = struct.Struct("<4sHHHHIIH")
_ZIP64_END = struct.Struct("<4sQHHIIQQQQ")
_ZIP64_LOCATOR = struct.Struct("<4sIQI")
_EMPTY_FINAL_BLOCK = b"\x01\x00\x00\xff\xff"


def java_url_encode(text: str) -> str:
    """``URLEncoder.encode(s, "UTF-8")``: form encoding, keeps ``A-Za-z0-9.-*_``, encodes ``~``."""
    return quote_plus(text, safe="*").replace("~", "%7E")


def zip_entry_name(facility: str, investigation: str, visit_id: str, dataset: str,
                   datafile: str) -> str:
    """ids.storage_file ``ZipMapper.getFullEntryName``; the datafile name is not encoded."""
    parts = [java_url_encode(p) for p in (facility, investigation, visit_id, dataset)]
    return "ids/" + "/".join(parts) + "/" + datafile


Entry = tuple[str, Callable[[], Iterable[bytes]]]  # (name, chunk source)


@dataclass
class _Written:
    """What the central directory repeats about one entry."""

    name: bytes
    dostime: int
    crc: int
    csize: int
    size: int
    offset: int


class _Output:
    """Parts waiting to leave as one piece; `written` counts every byte handed to it."""

    def __init__(self, chunk: int) -> None:
        self.chunk = chunk
        self.parts: list[bytes | memoryview] = []
        self.pending = 0
        self.written = 0

    def add(self, part: bytes | memoryview) -> None:
        self.parts.append(part)
        self.pending += len(part)
        self.written += len(part)

    def ready(self, final: bool = False) -> Iterator[bytes]:
        if self.pending >= self.chunk or (final and self.pending):
            out = b"".join(self.parts)
            self.parts, self.pending = [], 0
            yield out


def zip_stream(entries: Iterable[Entry], compress: bool, chunk: int = CHUNK) -> Iterator[bytes]:
    """Yield a zip of `entries` in pieces of about `chunk` bytes.

    A later entry with an already used name is skipped silently, as ZipOutputStream's
    duplicate-entry error is swallowed by the IDS.
    """
    out = _Output(chunk)
    written: list[_Written] = []
    seen: set[str] = set()
    for name, source in entries:
        if name in seen:
            continue
        seen.add(name)
        raw = name.encode("utf-8")
        entry = _Written(raw, dos_time(time.localtime()), 0, 0, 0, out.written)
        out.add(_LOCAL.pack(b"PK\x03\x04", VERSION, FLAGS, DEFLATED, entry.dostime, 0, 0, 0,
                            len(raw), 0) + raw)
        start = out.written
        if compress:
            deflater = zlib.compressobj(DEFAULT_LEVEL, zlib.DEFLATED, -15)
            for piece in source():
                entry.crc = crc32(piece, entry.crc)
                entry.size += len(piece)
                out.add(deflater.compress(piece))
                yield from out.ready()
            out.add(deflater.flush())
        else:
            held = b""  # one piece behind, so the last one's last block can be marked final
            for piece in source():
                if not piece:
                    continue
                entry.crc = crc32(piece, entry.crc)
                entry.size += len(piece)
                if held:
                    _stored_blocks(out, held, final=False)
                    yield from out.ready()
                held = piece
            _stored_blocks(out, held, final=True)
        entry.csize = out.written - start
        big = entry.csize >= MAGIC32 or entry.size >= MAGIC32
        out.add(struct.pack("<4sIQQ" if big else "<4sIII", b"PK\x07\x08", entry.crc,
                            entry.csize, entry.size))
        written.append(entry)
        yield from out.ready()
    directory = out.written
    for entry in written:
        out.add(_central(entry))
    _end(out, directory, out.written - directory, len(written))
    yield from out.ready(final=True)


def _stored_blocks(out: _Output, data: bytes, final: bool) -> None:
    """`data` as stored deflate blocks (no copy: the blocks are views of `data`)."""
    if not data:  # only ever the final block: `zip_stream` holds back no empty piece
        out.add(_EMPTY_FINAL_BLOCK)
        return
    view = memoryview(data)
    for at in range(0, len(data), STORED_MAX):
        block = view[at:at + STORED_MAX]
        last = final and at + STORED_MAX >= len(data)
        out.add(struct.pack("<BHH", 1 if last else 0, len(block), len(block) ^ 0xFFFF))
        out.add(block)


def _central(entry: _Written) -> bytes:
    """``writeCEN``: a ZIP64 extra holds whichever of size, csize and offset do not fit."""
    extra = b""
    size, csize, offset = entry.size, entry.csize, entry.offset
    if size >= MAGIC32:
        extra += struct.pack("<Q", size)
        size = MAGIC32
    if csize >= MAGIC32:
        extra += struct.pack("<Q", csize)
        csize = MAGIC32
    if offset >= MAGIC32:
        extra += struct.pack("<Q", offset)
        offset = MAGIC32
    if extra:
        extra = struct.pack("<HH", 0x0001, len(extra)) + extra
    version = VERSION_ZIP64 if extra else VERSION
    return _CENTRAL.pack(b"PK\x01\x02", version, version, FLAGS, DEFLATED, entry.dostime,
                         entry.crc, csize, size, len(entry.name), len(extra), 0, 0, 0, 0,
                         offset) + entry.name + extra


def _end(out: _Output, offset: int, length: int, count: int) -> None:
    """``writeEND``: the ZIP64 end record and locator only when a field overflows."""
    zip64 = offset >= MAGIC32 or length >= MAGIC32 or count >= MAGIC_COUNT
    if zip64:
        at = out.written
        out.add(_ZIP64_END.pack(b"PK\x06\x06", 44, VERSION_ZIP64, VERSION_ZIP64, 0, 0,
                                count, count, length, offset))
        out.add(_ZIP64_LOCATOR.pack(b"PK\x06\x07", 0, at, 1))
    shown = min(count, MAGIC_COUNT)
    out.add(_END.pack(b"PK\x05\x06", 0, 0, shown, shown, min(length, MAGIC32),
                      min(offset, MAGIC32), 0))


def dos_time(t: time.struct_time) -> int:
    """``javaToDosTime``: local time in MS-DOS form (2-second steps; before 1980 is 1980-01-01)."""
    if t.tm_year < 1980:
        return (1 << 21) | (1 << 16)
    return ((t.tm_year - 1980) << 25 | t.tm_mon << 21 | t.tm_mday << 16 | t.tm_hour << 11
            | t.tm_min << 5 | t.tm_sec >> 1)


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
