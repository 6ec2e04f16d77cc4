"""The simulated IDS's zip bytes, field by field, against OpenJDK's ``ZipOutputStream``
(``writeLOC``, ``writeEXT``, ``writeCEN``, ``writeEND``): what pollcat reads in production."""

from __future__ import annotations

import io
import struct
import time
import zipfile
import zlib

import pytest

from pollcat.unzip import iter_entries
from simfacility.zipstream_writer import dos_time, zip_stream

pytestmark = pytest.mark.unit

LOCAL = struct.Struct("<4sHHHIIIIHH")
CENTRAL = struct.Struct("<4sHHHHIIIIHHHHHII")
END = struct.Struct("<4sHHHHIIH")

FILES = {
    "ids/LILS/INV-001/1/run-42/scan_0001.nxs": bytes(range(256)) * 600,
    "ids/LILS/INV-001/1/run-42/empty.dat": b"",
    "ids/LILS/INV/1/ds/Ünïcødé ☃ файл.txt": "grüße".encode(),
    "ids/LILS/INV/1/ds/big.bin": bytes(300_000),
}


def source(data: bytes, piece: int = 70_000):
    return lambda: (data[i:i + piece] for i in range(0, len(data), piece))


def zipped(files: dict[str, bytes], compress: bool = False) -> bytes:
    return b"".join(zip_stream([(n, source(d)) for n, d in files.items()], compress))


def stored_blocks(body: bytes) -> tuple[list[int], int]:
    """Walk a DEFLATE stream made only of stored blocks: (block sizes, bytes used)."""
    at, sizes = 0, []
    while True:
        header = body[at]
        assert header >> 1 & 3 == 0, "not a stored block"
        size, nsize = struct.unpack_from("<HH", body, at + 1)
        assert size ^ 0xFFFF == nsize
        sizes.append(size)
        at += 5 + size
        if header & 1:
            return sizes, at


def test_level_0_entries_are_javas_form():
    before = dos_time(time.localtime())
    data = zipped(FILES)
    at = 0
    for name, payload in FILES.items():
        sig, version, flags, method, dostime, crc, csize, size, nlen, elen = \
            LOCAL.unpack_from(data, at)
        assert (sig, version, flags, method) == (b"PK\x03\x04", 20, 0x0808, 8)
        assert (crc, csize, size, elen) == (0, 0, 0, 0)  # all in the descriptor; no extra
        assert dostime >= before
        assert data[at + 30:at + 30 + nlen].decode() == name  # UTF-8, flagged on every entry
        at += 30 + nlen
        sizes, used = stored_blocks(data[at:])
        assert all(s <= 0xFFFF for s in sizes) and sum(sizes) == len(payload)
        assert zlib.decompress(data[at:at + used], -15) == payload
        at += used
        assert data[at:at + 16] == struct.pack("<4sIII", b"PK\x07\x08", zlib.crc32(payload),
                                               used, len(payload))
        at += 16
    assert data[at:at + 4] == b"PK\x01\x02"
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.testzip() is None
        assert [i.filename for i in z.infolist()] == list(FILES)
        for info in z.infolist():
            assert (info.create_version, info.extract_version, info.flag_bits) == (20, 20,
                                                                                   0x0808)
            assert z.read(info) == FILES[info.filename]


def test_an_empty_entry_is_one_empty_final_stored_block():
    name = "ids/F/I/1/ds/empty"
    data = zipped({name: b""})
    body = 30 + len(name)
    assert data[body:body + 5 + 16] == b"\x01\x00\x00\xff\xff" + struct.pack(
        "<4sIII", b"PK\x07\x08", 0, 5, 0)


def test_compressed_entries_use_the_default_level_and_read_back():
    files = {"ids/F/I/1/ds/text.txt": b"the same line again\n" * 20_000}
    data = zipped(files, compress=True)
    assert len(data) < 10_000
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.read("ids/F/I/1/ds/text.txt") == files["ids/F/I/1/ds/text.txt"]
        assert z.infolist()[0].flag_bits == 0x0808


def test_a_repeated_name_is_skipped_as_the_ids_swallows_javas_error():
    data = b"".join(zip_stream([("ids/F/I/1/ds/a", source(b"first")),
                                ("ids/F/I/1/ds/a", source(b"second"))], False))
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.namelist() == ["ids/F/I/1/ds/a"] and z.read("ids/F/I/1/ds/a") == b"first"


class StreamReader:
    """`read(n)` over a generator of pieces, keeping only the tail of what went by."""

    def __init__(self, pieces):
        self.pieces, self.buf, self.tail = iter(pieces), b"", b""

    def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            piece = next(self.pieces, b"")
            if not piece:
                break
            self.buf += piece
        out, self.buf = self.buf[:n], self.buf[n:]
        self.tail = (self.tail + out)[-4096:]
        return out

    def rest(self) -> bytes:
        while self.read(1 << 20):
            pass
        return self.tail


def test_an_entry_over_4_gib_gets_javas_zip64_records_and_pollcat_reads_it():
    """An 8-byte descriptor, then the central directory's ZIP64 extra (size, csize: no offset
    yet) and the ZIP64 end record and locator (the directory starts past 4 GiB)."""
    zero = bytes(1 << 20)
    size = (4 << 30) + (1 << 20)
    crc = 0
    for _ in range(size >> 20):
        crc = zlib.crc32(zero, crc)
    entries = [("ids/F/I/1/ds/huge.raw", lambda: (zero for _ in range(size >> 20))),
               ("ids/F/I/1/ds/small.txt", source(b"after"))]
    reader = StreamReader(zip_stream(entries, False))
    seen = []
    for entry in iter_entries(reader.read):
        n = sum(len(c) for c in entry.iter_chunks())
        seen.append((entry.name, n, entry.crc32))
    assert seen == [("ids/F/I/1/ds/huge.raw", size, crc),
                    ("ids/F/I/1/ds/small.txt", 5, zlib.crc32(b"after"))]
    tail = reader.rest()
    end = tail[-22:]
    sig, _, _, count, count2, cd_len, cd_off, _ = END.unpack(end)
    assert (sig, count, count2, cd_off) == (b"PK\x05\x06", 2, 2, 0xFFFFFFFF)
    locator = tail[-42:-22]
    assert locator[:4] == b"PK\x06\x07"
    record = tail[-98:-42]
    assert record[:4] == b"PK\x06\x06"
    (entries_total, length, offset) = struct.unpack_from("<QQQ", record, 32)
    assert entries_total == 2 and length == cd_len
    central = tail[-98 - length:-98]
    fields = CENTRAL.unpack_from(central)
    assert fields[0] == b"PK\x01\x02" and fields[1:3] == (45, 45)
    assert fields[7:9] == (0xFFFFFFFF, 0xFFFFFFFF)  # csize, size: in the extra
    nlen, elen = fields[9], fields[10]
    extra = central[46 + nlen:46 + nlen + elen]
    tag, length16, big_size, big_csize = struct.unpack("<HHQQ", extra)
    assert (tag, length16, big_size) == (1, 16, size) and big_csize > size
    small = CENTRAL.unpack_from(central, 46 + nlen + elen)
    assert small[1:3] == (45, 45)  # its offset is past 4 GiB: in its ZIP64 extra
    assert small[15] == 0xFFFFFFFF
