"""CRC32 at memory speed, and the CRC32 of a file on disk.

The CRC32 that decides a placement on a local target is read back from the part file just
before the rename (`transfer.verify_and_place`). For a large file that re-read is pure waiting
at the end of the transfer: `zlib.crc32` runs at about 2.5 GB/s on the project machine, so
1 GiB costs 0.4 s. `crc32` is ISA-L's (`isal`, carry-less multiply: tens of GB/s, the same
numbers) when installed, else zlib's. With zlib's, a large file's two halves are read on two
threads (`os.pread` and `zlib.crc32` release the GIL) and joined with `crc32_combine` (zlib's,
ported: Python's zlib does not expose it).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import IO

try:
    from isal.isal_zlib import crc32 as _isal_crc32
except ImportError:  # pragma: no cover - isal is a dependency, but a plain zlib still works
    _isal_crc32 = None

#: `crc32(data, value=0)`, zlib's signature and numbers.
crc32: Callable[..., int] = _isal_crc32 or zlib.crc32
FAST = _isal_crc32 is not None

_POLY = 0xEDB88320
BLOCK = 4 << 20
#: Below this a second thread costs more than it saves.
PARALLEL_MIN = 64 << 20


def _multmodp(a: int, b: int) -> int:
    """a * b modulo the CRC polynomial (bit-reflected), as zlib's `multmodp`."""
    m, p = 1 << 31, 0
    while True:
        if a & m:
            p ^= b
            if a & (m - 1) == 0:
                return p
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


def _x2n_table() -> list[int]:
    table, p = [], 1 << 30  # x^1
    for _ in range(32):
        table.append(p)
        p = _multmodp(p, p)
    return table


_X2N = _x2n_table()


def _x2nmodp(n: int, k: int) -> int:
    """x^(n * 2^k) modulo the polynomial."""
    p = 1 << 31  # x^0
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return p


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC32 of A + B from crc32(A), crc32(B) and len(B)."""
    return _multmodp(_x2nmodp(len2, 3), crc1) ^ crc2


def _crc_range(fd: int, start: int, end: int) -> tuple[int, int]:
    crc, pos = 0, start
    while pos < end:
        data = os.pread(fd, min(BLOCK, end - pos), pos)
        if not data:
            break
        crc, pos = crc32(data, crc), pos + len(data)
    return pos - start, crc


def crc_of_file(f: IO[bytes]) -> tuple[int, int]:
    """(size, crc32) of a whole regular file opened for reading, from its descriptor.

    The size is what was actually read (up to the size `fstat` gave when it started), so a file
    that shrinks meanwhile yields a short size and fails the size check, never a false match.
    """
    fd = f.fileno()
    size = os.fstat(fd).st_size
    if FAST or size < PARALLEL_MIN:
        got, crc = _crc_range(fd, 0, size)
    else:
        half = size // 2 - (size // 2) % BLOCK
        with ThreadPoolExecutor(1, thread_name_prefix="pollcat-crc") as pool:
            second = pool.submit(_crc_range, fd, half, size)
            got1, crc1 = _crc_range(fd, 0, half)
            got2, crc2 = second.result()
        if got1 < half:
            return got1, crc1
        got, crc = half + got2, crc32_combine(crc1, crc2, got2)
    if got == size and os.pread(fd, 1, size):  # grew meanwhile: count it as a mismatch
        got += 1
    return got, crc
