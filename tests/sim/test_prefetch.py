"""The IDS's read-ahead (`simfacility.ids_api.prefetch`) when a client goes away mid-stream."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from simfacility.ids_api import prefetch

pytestmark = pytest.mark.unit


def test_a_client_leaving_mid_read_closes_the_source_after_its_read(caplog):
    """Regression: the source was closed while a worker thread was still inside `next`
    ("ValueError: generator already executing" in the simulator's log, file left open)."""
    in_read, closed = threading.Event(), threading.Event()

    def chunks():
        try:
            yield b"first"
            in_read.set()
            time.sleep(0.3)  # a slow read (disk, deflate) still running when the client leaves
            yield b"second"
        finally:
            closed.set()

    async def client() -> list[bytes]:
        got = []
        stream = prefetch(chunks())
        got.append(await anext(stream))
        waiting = asyncio.ensure_future(anext(stream))
        while not in_read.is_set():
            await asyncio.sleep(0.01)
        waiting.cancel()  # the client went away while chunk 2 was being read: uvicorn cancels
        try:
            await waiting
        except asyncio.CancelledError:
            pass
        await stream.aclose()
        await asyncio.sleep(0.5)  # the loop runs on while the read finishes
        return got

    with caplog.at_level(logging.ERROR):
        assert asyncio.run(client()) == [b"first"]
        assert closed.wait(5), "the source was never closed"
    assert not [r for r in caplog.records if "already executing" in r.getMessage()
                or (r.exc_info and "already executing" in str(r.exc_info[1]))]
