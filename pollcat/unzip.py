"""Unzip the IDS's zip stream while it streams: a thin adapter over `stream-unzip`.

The IDS answers `getData` for a TopCAT download with a zip that Java's `ZipOutputStream` builds
on the fly and sends chunked, without a length. `zipfile` needs the central directory at the end
(a seekable file); `stream_unzip` reads the local headers in order and understands every form
the IDS sends: DEFLATED entries with data descriptors, signed or not, with 4- or 8-byte sizes
(Java's >4 GiB case), including `compress=false`, which is DEFLATE level 0 (design review §3).
The one form it refuses, STORED with a descriptor and no sizes (what Python's `zipfile` writes
to a socket), is never sent by the IDS and is a `PermanentError` here.

This module adds what pollcat needs on top:
- pollcat's error families: `TruncatedDataError` → `TruncatedStream` (fetch again),
  `CRC32IntegrityError` → `ChecksumMismatch`, `SizeIntegrityError` → `SizeMismatch`, bad
  deflate data and any other `DataError` → `CorruptStream` (all transient), an unsupported
  feature or an encrypted entry → `PermanentError`;
- names as text: UTF-8 (Java always writes UTF-8), else cp437, the zip default;
- `skip()`: stream-unzip requires each member to be read to its end before the next one.

CRC32: stream-unzip computes the CRC32 of every byte and checks it against the zip's own (it
offers neither a switch nor the value). pollcat's part writer computes its own while writing,
because that one is compared with ICAT's checksum: the zip's CRC only proves that the bytes
arrived as the IDS zipped them, not that they are the bytes ICAT catalogued. This adapter adds no
third pass (it counts bytes, it does not hash them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import stream_unzip as su

from pollcat.errors import (
    ChecksumMismatch,
    CorruptStream,
    PermanentError,
    PollcatError,
    SizeMismatch,
    TruncatedStream,
)

DEFAULT_CHUNK = 1 << 20


def _translate(exc: su.UnzipError, name: str | None) -> PollcatError:
    where = f"zip entry {name!r}" if name is not None else "zip stream"
    kw = {"datafile": name}
    if isinstance(exc, su.TruncatedDataError):
        return TruncatedStream(f"{where} ended early", **kw)
    if isinstance(exc, su.CRC32IntegrityError):
        return ChecksumMismatch(f"{where}: CRC32 disagrees with the zip's", **kw)
    if isinstance(exc, su.SizeIntegrityError):
        return SizeMismatch(f"{where}: size disagrees with the zip's", **kw)
    if isinstance(exc, su.UnsupportedFeatureError):
        return PermanentError(f"{where} uses a zip feature pollcat cannot stream: "
                              f"{type(exc).__name__}", **kw)
    if isinstance(exc, (su.PasswordError, su.MissingPasswordError)):
        return PermanentError(f"{where} is encrypted", **kw)
    # DeflateError, UnexpectedSignatureError, other DataErrors: bytes that are not a zip
    return CorruptStream(f"{where} is not valid zip data: {type(exc).__name__}", **kw)


def decode_name(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp437")


class ZipEntry:
    """One member of the stream. Read `iter_chunks()` (or call `skip()`) before the next one.

    `size` is the number of bytes read so far; once `done`, the whole entry has been verified
    against the zip's CRC32 and sizes.
    """

    def __init__(self, name: str, chunks: Iterator[bytes]):
        self.name = name
        self.size = 0
        self.done = False
        self._chunks = chunks
        self._reading = False

    def __repr__(self) -> str:
        return f"ZipEntry({self.name!r}, size={self.size}, done={self.done})"

    @property
    def is_dir(self) -> bool:
        return self.name.endswith("/")

    def iter_chunks(self, chunk: int | None = None) -> Iterator[bytes]:
        """The data, in pieces no larger than the `chunk` given to `iter_entries`."""
        if self._reading:
            raise RuntimeError(f"zip entry {self.name!r} is already being read")
        self._reading = True
        return self._read()

    def _read(self) -> Iterator[bytes]:
        while (data := self._next()) is not None:
            yield data

    def _next(self) -> bytes | None:
        """The next piece, counted; None at the (verified) end."""
        try:
            data = next(self._chunks)
        except StopIteration:
            self.done = True
            return None
        except su.UnzipError as exc:
            raise _translate(exc, self.name) from None
        self.size += len(data)
        return data

    def skip(self) -> None:
        """Read (and verify) the rest of the entry without keeping it."""
        self._reading = True
        while self._next() is not None:
            pass


def _reads(read: Callable[[int], bytes], size: int) -> Iterator[bytes]:
    while data := read(size):
        yield data


def iter_entries(read: Callable[[int], bytes], chunk: int = DEFAULT_CHUNK) -> Iterator[ZipEntry]:
    """The entries of a zip stream, in order, each to be read before the next is asked for.

    `read(n)` returns up to `n` bytes, b"" at the end (an HTTP response's `read`, a file's).
    An entry left partly read is drained and verified when the next one is requested.
    """
    members = su.stream_unzip(_reads(read, chunk), chunk_size=chunk,
                              allowed_encryption_mechanisms=(su.NO_ENCRYPTION,))
    while True:
        try:
            raw_name, _size, chunks = next(members)
        except StopIteration:
            return
        except su.UnzipError as exc:
            raise _translate(exc, None) from None
        entry = ZipEntry(decode_name(raw_name), chunks)
        yield entry
        if not entry.done:
            entry.skip()
