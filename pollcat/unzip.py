"""Unzip the IDS's zip stream while it streams, without a CRC32 of its own.

The IDS answers `getData` for a TopCAT download with a zip that Java's `ZipOutputStream` builds
on the fly and sends chunked, without a length. `zipfile` needs the central directory at the end
(a seekable file), so this reads the local headers in order and never keeps more than about one
read of compressed data in memory.

What it reads:
- DEFLATED entries with general-purpose bit 3: sizes and CRC32 come after the data in a data
  descriptor, with or without the `PK\\x07\\x08` signature, with 4- or 8-byte sizes. Java writes
  8-byte sizes when an entry passes 4 GiB without saying so in the local header, so the form is
  told by checking its sizes against the counted ones and by the signature that follows. The
  IDS's `compress=false` is DEFLATE level 0 (stored blocks), still DEFLATED (design review §3).
- STORED or DEFLATED entries with their sizes in the local header (also Zip64 extra fields).
The one form it refuses, STORED with a descriptor and no sizes (what Python's `zipfile` writes
to a socket; finding its end needs a CRC32 of every byte), is never sent by the IDS and is a
`PermanentError`.

CRC32: this reader computes none. Each entry's `crc32` is the one the zip declares, known once
its data has been read; the caller compares it with the CRC32 it computes anyway for ICAT's
checksum (`transfer.verify_and_place`, read back from the part file on a local target), so every
byte is hashed once (issue 8) and still checked against both the zip and ICAT. Sizes are checked
here against the header or descriptor.

Errors are pollcat's families: a stream that ends early `TruncatedStream` (fetch again); a size
that disagrees `SizeMismatch`; bytes that are not a zip or not valid deflate data `CorruptStream`
(all transient); an encrypted entry or another compression method `PermanentError`. Names are
UTF-8 (Java always writes UTF-8), else cp437, the zip default. Reading stops at the central
directory, whose bytes are left unread (the caller closes the connection).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator

from pollcat.errors import CorruptStream, PermanentError, SizeMismatch, TruncatedStream

LOCAL_SIG = b"PK\x03\x04"
DESCRIPTOR_SIG = b"PK\x07\x08"
END_SIGS = (b"PK\x01\x02", b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07", b"PK\x05\x05")
_NEXT_SIGS = (LOCAL_SIG, *END_SIGS)

STORED, DEFLATED = 0, 8
FLAG_ENCRYPTED = 0x0001
FLAG_DESCRIPTOR = 0x0008
ZIP64_EXTRA = 0x0001
U32_MAX = 0xFFFFFFFF

_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # 30 bytes
HEADER_READ = 64 * 1024
DEFAULT_CHUNK = 1 << 20


class _Source:
    """A `read(n)` callable with a small push-back buffer (for headers and unused deflate
    input). Large reads bypass the buffer: once it is empty, `take_some` hands out what `read`
    returns."""

    def __init__(self, read: Callable[[int], bytes]):
        self._read = read
        self._buf = b""
        self._pos = 0
        self.eof = False

    def available(self) -> int:
        return len(self._buf) - self._pos

    def fill(self, n: int) -> bool:
        """Buffer at least `n` bytes; False if the stream ends first."""
        while self.available() < n and not self.eof:
            data = self._read(max(n - self.available(), HEADER_READ))
            if not data:
                self.eof = True
                break
            self._buf = self._buf[self._pos:] + data
            self._pos = 0
        return self.available() >= n

    def peek(self, n: int) -> bytes:
        self.fill(n)
        return self._buf[self._pos:self._pos + n]

    def take(self, n: int, what: str) -> bytes:
        if not self.fill(n):
            raise TruncatedStream(f"zip stream ended inside {what}")
        data = self._buf[self._pos:self._pos + n]
        self._consume(n)
        return data

    def take_some(self, n: int) -> bytes:
        """Up to `n` bytes: buffered ones first, else one `read`; b"" at the end of stream."""
        if self.available():
            data = self._buf[self._pos:self._pos + n]
            self._consume(len(data))
            return data
        if self.eof:
            return b""
        data = self._read(n)
        if not data:
            self.eof = True
        return data

    def _consume(self, n: int) -> None:
        self._pos += n
        if self._pos >= len(self._buf):
            self._buf, self._pos = b"", 0

    def unread(self, data: bytes) -> None:
        if data:
            self._buf = data + self._buf[self._pos:]
            self._pos = 0


class ZipEntry:
    """One member of the stream. Read `iter_chunks()` (or call `skip()`) before the next one.

    `size` is the number of bytes read so far. Once `done`, the sizes have been checked against
    the zip's and `crc32` is the CRC32 the zip declares for the data (None before).
    """

    def __init__(self, source: _Source, name: str, method: int, flags: int,
                 header_crc: int, compressed_size: int | None, header_size: int | None,
                 chunk: int = DEFAULT_CHUNK):
        self.name = name
        self.size = 0
        self.done = False
        self.crc32: int | None = None
        self._source = source
        self._method = method
        self._flags = flags
        self._header_crc = header_crc
        self._header_csize = compressed_size
        self._header_size = header_size
        self._compressed = 0
        self._body: Iterator[bytes] | None = None
        self._chunk = chunk

    def __repr__(self) -> str:
        return f"ZipEntry({self.name!r}, size={self.size}, done={self.done})"

    @property
    def is_dir(self) -> bool:
        return self.name.endswith("/")

    def iter_chunks(self, chunk: int | None = None) -> Iterator[bytes]:
        """The data, in pieces of at most `chunk` bytes (default: `iter_entries`'); sizes
        checked at the end."""
        if self._body is not None:
            raise RuntimeError(f"zip entry {self.name!r} is already being read")
        self._body = self._read_body(chunk or self._chunk)
        return self._body

    def skip(self) -> None:
        """Read the rest of the entry (sizes checked) without keeping it."""
        for _ in self._body if self._body is not None else self.iter_chunks():
            pass

    def _read_body(self, chunk: int) -> Iterator[bytes]:
        parts = (self._inflate(chunk) if self._method == DEFLATED
                 else self._stored(self._header_csize or 0, chunk))
        for data in parts:
            self.size += len(data)
            yield data
        self._finish()

    def _truncated(self) -> TruncatedStream:
        return TruncatedStream(f"zip stream ended inside entry {self.name!r}",
                               datafile=self.name)

    def _inflate(self, chunk: int) -> Iterator[bytes]:
        source, inflater = self._source, zlib.decompressobj(-15)
        consumed = 0
        try:
            while not inflater.eof:
                data = source.take_some(chunk)
                if not data:
                    raise self._truncated()
                consumed += len(data)
                while True:
                    out = inflater.decompress(data, chunk)
                    if out:
                        yield out
                    if inflater.eof:  # unconsumed_tail is stale now; unused_data has the rest
                        break
                    data = inflater.unconsumed_tail
                    if not data and len(out) < chunk:  # a full `out` may leave output pending
                        break
        except zlib.error as exc:
            raise CorruptStream(f"bad deflate data in zip entry {self.name!r}: {exc}",
                                datafile=self.name) from None
        source.unread(inflater.unused_data)
        self._compressed = consumed - len(inflater.unused_data)

    def _stored(self, remaining: int, chunk: int) -> Iterator[bytes]:
        self._compressed = remaining
        while remaining:
            data = self._source.take_some(min(chunk, remaining))
            if not data:
                raise self._truncated()
            remaining -= len(data)
            yield data

    def _finish(self) -> None:
        if self._header_csize is None:
            crc, size = self._read_descriptor()
        else:
            crc, size = self._header_crc, self._header_size
            if self._flags & FLAG_DESCRIPTOR:  # sizes were in the header too: skip its copy
                crc = self._read_descriptor()[0]
        self.crc32 = crc
        self.done = True
        if size != self.size:
            raise SizeMismatch(f"zip entry {self.name!r} has {self.size} bytes, the zip says "
                               f"{size}", datafile=self.name)

    def _read_descriptor(self) -> tuple[int, int]:
        """(CRC32, size) from whichever of the four descriptor forms follows.

        Best is a form whose sizes match the counted ones and that a valid signature follows
        (an empty entry's 8-byte descriptor also reads as a matching 4-byte one); then matching
        sizes; then a form a valid signature follows (its sizes disagree: SizeMismatch).
        """
        source, csize, size = self._source, self._compressed, self.size
        source.fill(4 + 20 + 4)
        head = source.peek(28)
        candidates = []
        for signed in (True, False):
            if signed and not head.startswith(DESCRIPTOR_SIG):
                continue
            start = 4 if signed else 0
            for fmt, length in (("<III", 12), ("<IQQ", 20)):
                raw = head[start:start + length]
                if len(raw) == length:
                    candidates.append((start + length, struct.unpack(fmt, raw)))

        def rank(candidate: tuple[int, tuple[int, int, int]]) -> tuple[bool, bool]:
            length, (_crc, c, u) = candidate
            return (c, u) != (csize, size), head[length:length + 4] not in _NEXT_SIGS

        for length, (crc, c, u) in sorted(candidates, key=rank):  # stable: signed, 4-byte first
            if (c, u) == (csize, size) or head[length:length + 4] in _NEXT_SIGS:
                source.take(length, "a data descriptor")
                return crc, u
        if len(head) < 28:  # a whole zip has the longest form and a signature after it
            raise TruncatedStream(f"zip stream ended in the descriptor of {self.name!r}",
                                  datafile=self.name)
        raise CorruptStream(f"no valid data descriptor after zip entry {self.name!r}",
                            datafile=self.name)


def decode_name(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp437")


def _zip64_sizes(extra: bytes, csize: int, size: int) -> tuple[int, int]:
    """Apply a Zip64 extra field (uncompressed size first, then compressed) if present."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4:pos + 4 + length]
        if tag == ZIP64_EXTRA:
            values = [struct.unpack_from("<Q", body, i)[0] for i in range(0, len(body) - 7, 8)]
            if size == U32_MAX and values:
                size = values.pop(0)
            if csize == U32_MAX and values:
                csize = values.pop(0)
            return csize, size
        pos += 4 + length
    return csize, size


def _read_header(source: _Source, chunk: int) -> ZipEntry | None:
    """The next local header, or None at the central directory."""
    sig = source.peek(4)
    if len(sig) < 4:
        raise TruncatedStream("zip stream ended before its central directory")
    if sig in END_SIGS:
        return None
    if sig != LOCAL_SIG:
        raise CorruptStream(f"expected a zip local header, found {sig!r}")
    (_sig, _version, flags, method, _time, _date, crc, csize, size, name_len,
     extra_len) = _LOCAL_HEADER.unpack(source.take(_LOCAL_HEADER.size, "a local header"))
    name = decode_name(source.take(name_len, "a local header"))
    extra = source.take(extra_len, "a local header")
    if flags & FLAG_ENCRYPTED:
        raise PermanentError(f"zip entry {name!r} is encrypted", datafile=name)
    if method not in (STORED, DEFLATED):
        raise PermanentError(f"zip entry {name!r} uses compression method {method}, which "
                             "pollcat cannot stream", datafile=name)
    csize, size = _zip64_sizes(extra, csize, size)
    if flags & FLAG_DESCRIPTOR and crc == 0 and csize == 0 and size == 0:
        if method == STORED:
            raise PermanentError(f"zip entry {name!r} is STORED with its sizes after the data, "
                                 "a form the IDS never sends and pollcat cannot stream",
                                 datafile=name)
        return ZipEntry(source, name, method, flags, 0, None, None, chunk)  # sizes after
    if method == STORED and csize != size:
        raise CorruptStream(f"stored zip entry {name!r} has different sizes {csize}/{size}",
                            datafile=name)
    return ZipEntry(source, name, method, flags, crc, csize, size, chunk)


def iter_entries(read: Callable[[int], bytes], chunk: int = DEFAULT_CHUNK) -> Iterator[ZipEntry]:
    """The entries of a zip stream, in order, each to be read before the next is asked for.

    `read(n)` returns up to `n` bytes, b"" at the end (an HTTP response's `read`, a file's).
    An entry left partly read is drained (sizes checked) when the next one is requested.
    `chunk` is the largest piece an entry's `iter_chunks()` yields by default.
    """
    source = _Source(read)
    while True:
        entry = _read_header(source, chunk)
        if entry is None:
            return
        yield entry
        if not entry.done:
            entry.skip()
