"""Chunks reuse freed memory (`pollcat.memory`): measured as page faults in a fresh process.

Each process allocates chunks that keep outgrowing the last one (what a stream of joined and
inflated pieces does). With glibc's defaults each gets its own mapping and fresh pages; with
pollcat's thresholds they come from the heap, whose pages are reused.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from pollcat.targetfs import libc

CHURN = """
import resource, sys
if sys.argv[1] == "tuned":
    from pollcat import memory
    assert memory.reuse_chunk_memory() and memory.reuse_chunk_memory()  # once is enough
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for size in range(256 << 10, 16 << 20, 64 << 10):
    data = b"x" * size
    del data
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True,
                         check=True, timeout=120)
    return int(out.stdout)


@pytest.mark.skipif(libc.function("mallopt") is None, reason="glibc's mallopt is not here")
def test_chunks_come_from_reused_heap_memory_not_fresh_pages():
    default, tuned = _faults("default"), _faults("tuned")
    assert default > 100_000  # every chunk its own mapping: about 500,000 faults
    assert tuned < default / 20
