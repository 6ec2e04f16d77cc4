"""Conformance suite of the streaming unzip (`pollcat.unzip`): zips from Python's zipfile
(unseekable) and Java-style hand-built streams.

The reader computes no CRC32 (issue 8: each byte is hashed once, by the CRC32 compared with
ICAT's checksum); each entry's `crc32` is the one the zip declares, and these tests check it
against the bytes. STORED entries with a data descriptor and no sizes (what Python's `zipfile`
writes to an unseekable sink) are refused with a clear PermanentError: the IDS never sends that
form (its `compress=false` is DEFLATE level 0, design review §3).
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib

import pytest

from pollcat.errors import (
    CorruptStream,
    PermanentError,
    SizeMismatch,
    TransientError,
    TruncatedStream,
    VerificationError,
)
from pollcat.unzip import iter_entries

pytestmark = pytest.mark.unit


class Unseekable(io.RawIOBase):
    """A sink without tell/seek, so zipfile writes data descriptors as over a socket."""

    def __init__(self):
        self.buf = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.buf += bytes(b)
        return len(b)

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        raise OSError("unseekable")


def make_zip(files: dict[str, bytes], *, method=zipfile.ZIP_DEFLATED, level: int | None = 6,
             force_zip64: bool = False) -> bytes:
    sink = Unseekable()
    with zipfile.ZipFile(sink, "w", compression=method, compresslevel=level) as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = method
            with zf.open(info, "w", force_zip64=force_zip64) as dest:
                dest.write(data)
    return bytes(sink.buf)


def java_zip(files: dict[str, bytes], *, signed: bool = True, level: int = 0,
             zip64_descriptor: bool = False) -> bytes:
    """What java.util.zip.ZipOutputStream writes: DEFLATED, bit 3, UTF-8 names, descriptors."""
    out = bytearray()
    for name, data in files.items():
        raw = name.encode()
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0x0808, 8, 0, 0, 0, 0, 0,
                           len(raw), 0) + raw
        comp = zlib.compressobj(level, zlib.DEFLATED, -15)
        body = comp.compress(data) + comp.flush()
        out += body
        fmt = "<IQQ" if zip64_descriptor else "<III"
        out += (b"PK\x07\x08" if signed else b"") + struct.pack(
            fmt, zlib.crc32(data), len(body), len(data))
    out += b"PK\x01\x02" + b"\0" * 42  # the central directory begins; never parsed
    return bytes(out)


def reader(data: bytes, piece: int | None = None):
    """A read(n) over `data`; `piece` caps each read like a chunked HTTP body."""
    stream = io.BytesIO(data)

    def read(n: int) -> bytes:
        return stream.read(min(n, piece) if piece else n)

    return read


def unzip(data: bytes, *, piece: int | None = None, chunk: int = 1 << 20):
    result = {}
    for entry in iter_entries(reader(data, piece)):
        body = b"".join(entry.iter_chunks(chunk))
        assert entry.size == len(body) and entry.done
        assert entry.crc32 == zlib.crc32(body), entry.name  # what the caller checks
        result[entry.name] = body
    return result


FILES = {
    "ids/LILS/INV-001/1/run-42/scan_0001.nxs": os.urandom(70_000),
    "ids/LILS/INV-001/1/run-42/notes/readme.txt": b"hello\n" * 1000,
    "ids/LILS/INV-001/1/run-42/empty.dat": b"",
    "ids/LILS/INV/1/ds/Ünïcødé ☃ файл.txt": "grüße".encode(),
}


@pytest.mark.parametrize("level", [0, 6])
@pytest.mark.parametrize("piece", [None, 1, 7, 4096])
def test_python_deflated_unseekable(level, piece):
    data = make_zip(FILES, level=level)
    if piece == 1:  # one-byte reads: every header crosses reads (keep the input small)
        data = make_zip({k: v[:3000] for k, v in FILES.items()}, level=level)
        assert unzip(data, piece=1) == {k: v[:3000] for k, v in FILES.items()}
        return
    assert unzip(data, piece=piece) == FILES


def test_stored_with_descriptor_and_no_sizes_is_refused_clearly():
    """Never sent by the IDS (see the module docstring): a permanent, named refusal."""
    with pytest.raises(PermanentError) as info:
        unzip(make_zip(FILES, method=zipfile.ZIP_STORED, level=None))
    assert not isinstance(info.value, TransientError)


def test_stored_with_sizes_in_header_and_seekable_zip():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:  # seekable: sizes in the local header, no bit 3
        zf.writestr(zipfile.ZipInfo("a/stored.txt"), b"stored data" * 100)
        zf.writestr(zipfile.ZipInfo("b/deflated.txt"), b"deflated" * 100,
                    compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr("dir/", b"")
    got = unzip(buf.getvalue(), piece=5)
    assert got == {"a/stored.txt": b"stored data" * 100, "b/deflated.txt": b"deflated" * 100,
                   "dir/": b""}


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("zip64", [True, False])
@pytest.mark.parametrize("level", [0, 6])
def test_java_style_descriptors(signed, zip64, level):
    data = java_zip(FILES, signed=signed, zip64_descriptor=zip64, level=level)
    assert unzip(data, piece=333) == FILES


def test_python_force_zip64():
    assert unzip(make_zip(FILES, force_zip64=True)) == FILES


def test_names_utf8_and_cp437():
    data = java_zip({"dir/sub/ä.txt": b"x"})
    assert [e.name for e in iter_entries(reader(data))] == ["dir/sub/ä.txt"]
    # a name that is not UTF-8 is read as cp437, the zip default (0x84 is "ä" there)
    cp = bytes(data).replace("ä".encode(), b"\x84_")  # same length, so offsets still hold
    assert [e.name for e in iter_entries(reader(cp))] == ["dir/sub/ä_.txt"]


def test_large_entry_chunks_bounded():
    big = os.urandom(1 << 20) * 20  # 20 MiB, compressible after the first MiB
    data = make_zip({"big.bin": big, "after.txt": b"after"}, level=6)
    entries = iter_entries(reader(data))
    entry = next(entries)
    crc, size, biggest = 0, 0, 0
    for part in entry.iter_chunks(1 << 20):
        crc, size, biggest = zlib.crc32(part, crc), size + len(part), max(biggest, len(part))
    assert (size, crc) == (len(big), zlib.crc32(big))
    assert biggest <= 1 << 20
    assert entry.size == len(big) and entry.done
    nxt = next(entries)
    assert nxt.name == "after.txt" and b"".join(nxt.iter_chunks()) == b"after"
    assert list(entries) == []


def test_skip_and_auto_drain():
    data = make_zip(FILES)
    seen = {}
    for i, entry in enumerate(iter_entries(reader(data))):
        if i == 0:
            entry.skip()
            assert entry.size == len(FILES[entry.name])
        elif i == 1:
            next(entry.iter_chunks(10))  # partly read: drained on advance
        else:
            seen[entry.name] = b"".join(entry.iter_chunks())
    assert seen == dict(list(FILES.items())[2:])


def test_entry_cannot_be_read_twice():
    entry = next(iter_entries(reader(make_zip(FILES))))
    b"".join(entry.iter_chunks())
    with pytest.raises(RuntimeError):
        entry.iter_chunks()


def test_empty_zip():
    sink = Unseekable()
    zipfile.ZipFile(sink, "w").close()
    assert list(iter_entries(reader(bytes(sink.buf)))) == []


@pytest.mark.parametrize("maker", [
    lambda: make_zip(FILES, level=6),
    lambda: make_zip(FILES, level=0),
    lambda: java_zip(FILES, signed=False),
    lambda: java_zip(FILES, zip64_descriptor=True),
])
def test_truncation_is_transient(maker):
    data = maker()
    central = data.index(b"PK\x01\x02")
    for cut in (0, 2, 20, 40, 5000, 70_100, central - 10, central - 1, central):
        with pytest.raises(TruncatedStream) as info:
            unzip(data[:cut], piece=999)
        assert isinstance(info.value, TransientError)


def test_corrupt_deflate_data():
    data = bytearray(make_zip({"a.txt": b"hello world " * 5000}, level=6))
    data[60:70] = b"\xff" * 10
    with pytest.raises(VerificationError):
        unzip(bytes(data))


def test_corrupt_stored_level0_data_reaches_the_caller_with_the_zips_crc():
    """Flipped bytes inside a stored block are still valid deflate: the reader hands them on
    with the CRC32 the zip declares, and the caller's CRC32 of what it wrote disagrees
    (`transfer.verify_and_place` refuses to place it: tests/pollcat/test_hostile_zip.py)."""
    payload = os.urandom(5000)
    data = bytearray(java_zip({"a.bin": payload}, level=0))
    start = bytes(data).index(payload[:50])
    data[start + 100] ^= 0xFF
    (entry,) = list(_read_all(bytes(data)))
    assert entry[1] != payload and entry[0].crc32 == zlib.crc32(payload)
    assert zlib.crc32(entry[1]) != entry[0].crc32


def _read_all(data: bytes):
    for entry in iter_entries(reader(data)):
        yield entry, b"".join(entry.iter_chunks())


def test_descriptor_size_disagrees():
    data = bytearray(java_zip({"a.bin": b"x" * 100}, signed=True))
    at = bytes(data).index(b"PK\x07\x08")
    struct.pack_into("<I", data, at + 12, 99)  # uncompressed size field
    with pytest.raises(SizeMismatch):
        unzip(bytes(data))


def test_stored_entry_declares_its_header_crc():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("s.txt", b"stored data")
    data = bytearray(buf.getvalue())
    data[30 + len("s.txt")] ^= 0x01  # first data byte
    ((entry, body),) = list(_read_all(bytes(data)))
    assert body == b"rtored data" and entry.crc32 == zlib.crc32(b"stored data")


def test_garbage_is_corrupt():
    with pytest.raises(CorruptStream):
        list(iter_entries(reader(b"<html>Service unavailable</html>")))


@pytest.mark.parametrize("flags, method", [(0x0809, 8), (0x0808, 14)])
def test_encrypted_or_unknown_method_is_permanent(flags, method):
    """An encrypted entry or a compression method pollcat cannot stream (14: LZMA) is refused."""
    data = bytearray(java_zip({"a.bin": b"x" * 100}))
    struct.pack_into("<HH", data, 6, flags, method)
    with pytest.raises(PermanentError) as info:
        unzip(bytes(data))
    assert info.value.datafile in ("a.bin", None)
    assert not isinstance(info.value, TransientError)
