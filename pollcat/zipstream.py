"""Unzip a non-seekable zip stream while it streams.

The IDS answers `getData` for a TopCAT download with a zip built on the fly by Java's
`ZipOutputStream` and sent chunked, without a length. `zipfile.ZipFile` needs the central
directory at the end (and so a seekable file), which would mean holding the whole download (often
terabytes) on disk first. This module reads the local headers in order instead and never keeps
more than about one read of compressed data in memory.

What it understands:

* DEFLATED entries with general-purpose bit 3: sizes and CRC come after the data in a data
  descriptor, with or without the optional `PK\\x07\\x08` signature, with 4- or 8-byte (Zip64)
  sizes. Java uses 8-byte sizes whenever an entry exceeds 4 GiB without saying so in the local
  header, so the descriptor form is recognised by checking its sizes against the counted ones.
  The IDS's `compress=false` is DEFLATE level 0 (stored blocks), which is still DEFLATED.
* STORED entries with the sizes in the local header (also Zip64 extra fields).
* STORED entries with bit 3 and no sizes, as Python's `zipfile` writes to an unseekable
  stream: the end is found by scanning for a descriptor whose CRC and size match the bytes
  before it (a false match needs a 96-bit coincidence).

Errors: a stream that ends early raises `TruncatedStream` (transient: fetch again); bytes that
are not a zip or not valid deflate data raise `CorruptStream`; a CRC or size that disagrees with
the descriptor raises `ChecksumMismatch`/`SizeMismatch` (all `VerificationError`s, so also
transient). Encrypted entries and other compression methods raise `PermanentError`.

Reading stops at the central directory; its bytes are left unread (the caller closes the
connection).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator

from pollcat.errors import (
    ChecksumMismatch,
    CorruptStream,
    PermanentError,
    SizeMismatch,
    TruncatedStream,
)

LOCAL_SIG = b"PK\x03\x04"
DESCRIPTOR_SIG = b"PK\x07\x08"
END_SIGS = (b"PK\x01\x02", b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07", b"PK\x05\x05")
_NEXT_SIGS = (LOCAL_SIG, *END_SIGS)

STORED, DEFLATED = 0, 8
FLAG_ENCRYPTED = 0x0001
FLAG_DESCRIPTOR = 0x0008
FLAG_UTF8 = 0x0800
ZIP64_EXTRA = 0x0001
U32_MAX = 0xFFFFFFFF

_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # 30 bytes
HEADER_READ = 64 * 1024
DEFAULT_CHUNK = 1 << 20


class _Source:
    """A `read(n)` callable with a small push-back buffer (for headers and unused deflate input).

    Large reads bypass the buffer: once it is empty, `take_some` hands out what `read` returns.
    """

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

    def view(self, limit: int) -> bytes:
        """Up to `limit` buffered bytes, without consuming them."""
        return self._buf[self._pos:self._pos + limit]

    def take(self, n: int, what: str) -> bytes:
        if not self.fill(n):
            raise TruncatedStream(f"zip stream ended inside {what}")
        return self.take_buffered(n)

    def take_buffered(self, n: int) -> bytes:
        data = self._buf[self._pos:self._pos + n]
        self._pos += len(data)
        if self._pos >= len(self._buf):
            self._buf, self._pos = b"", 0
        return data

    def take_some(self, n: int) -> bytes:
        """Up to `n` bytes: buffered ones first, else one `read`; b"" at the end of stream."""
        if self.available():
            return self.take_buffered(n)
        if self.eof:
            return b""
        data = self._read(n)
        if not data:
            self.eof = True
        return data

    def unread(self, data: bytes) -> None:
        if data:
            self._buf = data + self._buf[self._pos:]
            self._pos = 0


class ZipEntry:
    """One entry of the stream. Consume `iter_chunks()` (or call `skip()`) before the next one.

    `crc32` and `size` are None until the data has been read, then the computed values, already
    verified against the local header or data descriptor.
    """

    def __init__(self, source: _Source, name: str, method: int, flags: int,
                 header_crc: int, compressed_size: int | None, header_size: int | None,
                 zip64: bool):
        self.name = name
        self.method = method
        self.flags = flags
        self.crc32: int | None = None
        self.size: int | None = None
        self.compressed_size: int | None = None
        self._source = source
        self._header_crc = header_crc
        self._header_csize = compressed_size
        self._header_size = header_size
        self.zip64 = zip64
        self._descriptor_skip = 0
        self._body: Iterator[bytes] | None = None
        self.done = False

    def __repr__(self) -> str:
        return f"ZipEntry({self.name!r}, method={self.method}, size={self.size})"

    @property
    def is_dir(self) -> bool:
        return self.name.endswith("/")

    def iter_chunks(self, chunk: int = DEFAULT_CHUNK) -> Iterator[bytes]:
        """The decompressed data, in pieces of at most `chunk` bytes (verified at the end)."""
        if self._body is not None:
            raise RuntimeError(f"zip entry {self.name!r} is already being read")
        self._body = self._read_body(chunk)
        return self._body

    def skip(self) -> None:
        """Read (and verify) the rest of the entry without keeping it."""
        body = self._body if self._body is not None else self.iter_chunks()
        for _ in body:
            pass

    # -- body readers ------------------------------------------------------------------------

    def _read_body(self, chunk: int) -> Iterator[bytes]:
        crc, size = 0, 0
        if self.method == DEFLATED:
            parts = self._inflate(chunk)
        elif self._header_csize is not None:
            parts = self._stored_sized(self._header_csize, chunk)
        else:
            parts = self._stored_scan(chunk)
        for data in parts:
            crc = zlib.crc32(data, crc)
            size += len(data)
            yield data
        self._finish(crc, size)

    def _inflate(self, chunk: int) -> Iterator[bytes]:
        source, inflater = self._source, zlib.decompressobj(-15)
        consumed = 0
        try:
            while not inflater.eof:
                data = source.take_some(chunk)
                if not data:
                    raise TruncatedStream(f"zip stream ended inside entry {self.name!r}",
                                          datafile=self.name)
                consumed += len(data)
                while True:
                    out = inflater.decompress(data, chunk)
                    if out:
                        yield out
                    if inflater.eof:  # unconsumed_tail is stale now; unused_data has the rest
                        break
                    data = inflater.unconsumed_tail
                    # a full `out` may leave output pending inside zlib: ask again
                    if not data and len(out) < chunk:
                        break
        except zlib.error as exc:
            raise CorruptStream(f"bad deflate data in zip entry {self.name!r}: {exc}",
                                datafile=self.name) from exc
        source.unread(inflater.unused_data)
        self.compressed_size = consumed - len(inflater.unused_data)

    def _stored_sized(self, remaining: int, chunk: int) -> Iterator[bytes]:
        self.compressed_size = remaining
        while remaining:
            data = self._source.take_some(min(chunk, remaining))
            if not data:
                raise TruncatedStream(f"zip stream ended inside entry {self.name!r}",
                                      datafile=self.name)
            remaining -= len(data)
            yield data

    def _stored_scan(self, chunk: int) -> Iterator[bytes]:
        """STORED without sizes: the data ends at a descriptor that matches what came before."""
        source, crc, size = self._source, 0, 0
        while True:
            if not source.fill(chunk + 28):
                if source.available() < 16:
                    raise TruncatedStream(f"zip stream ended inside entry {self.name!r}",
                                          datafile=self.name)
            window = source.view(chunk + 3)
            at = window.find(DESCRIPTOR_SIG)
            if at < 0:
                data = source.take_buffered(max(min(len(window) - 3, chunk), 1))
            elif self._descriptor_at(at, zlib.crc32(window[:at], crc), size + at):
                data = source.take_buffered(at)
                self.compressed_size = size + len(data)
                if data:
                    yield data
                return
            else:
                data = source.take_buffered(at + 1)
            crc, size = zlib.crc32(data, crc), size + len(data)
            yield data

    def _descriptor_at(self, at: int, crc: int, size: int) -> bool:
        """Whether a signed descriptor at buffer offset `at` describes `crc`/`size` exactly."""
        source = self._source
        source.fill(at + 28)
        raw = source.view(at + 28)[at + 4:]
        matching = [length for fmt, length in (("<III", 12), ("<IQQ", 20))
                    if len(raw) >= length and struct.unpack(fmt, raw[:length]) == (crc, size, size)]
        # an empty entry's Zip64 descriptor also reads as a 4-byte one: trust what follows
        matching.sort(key=lambda length: raw[length:length + 4] not in _NEXT_SIGS)
        if matching:
            self._descriptor_skip = 4 + matching[0]
        return bool(matching)

    # -- verification ------------------------------------------------------------------------

    def _finish(self, crc: int, size: int) -> None:
        if self.flags & FLAG_DESCRIPTOR:
            if self.method == STORED and self._header_csize is None:
                self._source.take(self._descriptor_skip, "a data descriptor")
                expected_crc, expected_size = crc, size
            else:
                expected_crc, expected_size = self._read_descriptor(size)
        else:
            expected_crc, expected_size = self._header_crc, self._header_size
        self.crc32, self.size = crc, size
        self.done = True
        if expected_size != size:
            raise SizeMismatch(f"zip entry {self.name!r} has {size} bytes, the zip says "
                               f"{expected_size}", datafile=self.name)
        if expected_crc != crc:
            raise ChecksumMismatch(f"zip entry {self.name!r} has CRC32 {crc:08x}, the zip says "
                                   f"{expected_crc:08x}", datafile=self.name)

    def _read_descriptor(self, size: int) -> tuple[int, int]:
        """Find which of the four descriptor forms follows, by the sizes we counted.

        Best is a form whose sizes match and that is followed by a valid signature (an empty
        entry's Zip64 descriptor also reads as a matching 4-byte one); then matching sizes;
        then a form followed by a valid signature (whose sizes disagree: SizeMismatch).
        """
        source, csize = self._source, self.compressed_size
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
        if len(head) < 16:
            raise TruncatedStream(f"zip stream ended in the descriptor of {self.name!r}",
                                  datafile=self.name)
        raise CorruptStream(f"no valid data descriptor after zip entry {self.name!r}",
                            datafile=self.name)


# --- headers ------------------------------------------------------------------------------


def _zip64_sizes(extra: bytes, csize: int, size: int) -> tuple[int, int, bool]:
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
            return csize, size, True
        pos += 4 + length
    return csize, size, False


def _decode_name(raw: bytes, flags: int) -> str:
    try:
        return raw.decode("utf-8") if flags & FLAG_UTF8 else raw.decode("cp437")
    except UnicodeDecodeError as exc:
        raise CorruptStream(f"zip entry name {raw!r} is not valid UTF-8") from exc


def _read_header(source: _Source) -> ZipEntry | None:
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
    raw_name = source.take(name_len, "a local header")
    extra = source.take(extra_len, "a local header")
    name = _decode_name(raw_name, flags)
    if flags & FLAG_ENCRYPTED:
        raise PermanentError(f"zip entry {name!r} is encrypted", datafile=name)
    if method not in (STORED, DEFLATED):
        raise PermanentError(f"zip entry {name!r} uses unsupported compression method {method}",
                             datafile=name)
    csize, size, zip64 = _zip64_sizes(extra, csize, size)
    known: int | None = csize
    if flags & FLAG_DESCRIPTOR and crc == 0 and csize == 0 and size == 0:
        known = None  # sizes come after the data
    if method == STORED and known is not None and csize != size:
        raise CorruptStream(f"stored zip entry {name!r} has different sizes {csize}/{size}")
    return ZipEntry(source, name, method, flags, crc, known,
                    size if known is not None else None, zip64)


def iter_entries(read: Callable[[int], bytes]) -> Iterator[ZipEntry]:
    """The entries of a zip stream, in order, each to be read before the next is asked for.

    `read(n)` returns up to `n` bytes, b"" at the end (an `HTTPResponse.read`, a file's
    `read`). An entry left partly read is drained and verified when the next one is requested.
    """
    source = _Source(read)
    while True:
        entry = _read_header(source)
        if entry is None:
            return
        yield entry
        if not entry.done:
            entry.skip()
