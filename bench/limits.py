"""The physical limits of this machine, measured in the same run as pollcat: the disk (`dd`
with fdatasync, into memory just freed and into idle memory: bench/common.py), CRC32 (zlib's,
and the one pollcat uses) and, in `throughput`, `curl -o /dev/null` from the simulator."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
import zlib
from pathlib import Path

from bench.common import idle_memory, just_freed_memory


def dd_fdatasync(mib: int = 1024) -> float:
    """MB/s of `dd bs=1M conv=fdatasync` writing `mib` MiB to the temp directory's disk."""
    fd, path = tempfile.mkstemp(prefix="pollcat-dd-")
    os.close(fd)
    try:
        res = subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={mib}",
                              "conv=fdatasync"], capture_output=True, text=True, check=True)
    finally:
        os.unlink(path)
    secs = float(re.search(r"copied, ([0-9.]+) s", res.stderr).group(1))  # type: ignore[union-attr]
    return mib * (1 << 20) / secs / 1e6


def crc_MBps(fn, mib: int = 512) -> float:  # noqa: N802 - a unit
    data = os.urandom(1 << 20)
    t0 = time.perf_counter()
    crc = 0
    for _ in range(mib):
        crc = fn(data, crc)
    return mib * (1 << 20) / (time.perf_counter() - t0) / 1e6


def main() -> dict:
    from pollcat.crcread import FAST, crc32

    scratch = Path(tempfile.gettempdir())
    just_freed_memory((1 << 30) + (1 << 27), scratch)
    dd_fresh = dd_fdatasync()
    idle_memory()
    result = {"dd_fdatasync_1GiB_MBps": round(dd_fresh, 1),
              "dd_fdatasync_idle_memory_MBps": round(dd_fdatasync(), 1),
              "zlib_crc32_MBps": round(crc_MBps(zlib.crc32), 1),
              "pollcat_crc32": "isal" if FAST else "zlib",
              "pollcat_crc32_MBps": round(crc_MBps(crc32), 1),
              "cpus": os.cpu_count()}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
