"""The hand-over of one zip entry's chunks between the reading and the staging thread."""

from __future__ import annotations

import threading

import pytest

from pollcat.entryfeed import EntryFeed
from pollcat.errors import TruncatedStream

pytestmark = pytest.mark.unit


def produce(feed: EntryFeed, chunks: list[bytes], *, crc: int | None = None,
            error: BaseException | None = None) -> threading.Thread:
    def run() -> None:
        for data in chunks:
            feed.put(data)
        if error is None:
            feed.end(crc)
        else:
            feed.fail(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_chunks_arrive_in_order_with_the_declared_crc():
    feed = EntryFeed(depth=2)
    chunks = [bytes([i]) * 1000 for i in range(10)]
    producer = produce(feed, chunks, crc=0x1234ABCD)
    assert list(feed) == chunks
    producer.join(5)
    assert feed.declared_crc == 0x1234ABCD


def test_a_reader_error_reaches_the_consumer_after_the_data_before_it():
    feed = EntryFeed(depth=2)
    producer = produce(feed, [b"a", b"b", b"c"], error=TruncatedStream("cut", datafile="f"))
    got = []
    with pytest.raises(TruncatedStream):
        for data in feed:
            got.append(data)
    producer.join(5)
    assert got == [b"a", b"b", b"c"] and feed.declared_crc is None


@pytest.mark.parametrize("ending", ["end", "fail"])
def test_a_consumer_that_stops_early_drains_so_the_reader_never_blocks(ending):
    feed = EntryFeed(depth=2)
    error = TruncatedStream("cut", datafile="f") if ending == "fail" else None
    producer = produce(feed, [b"x"] * 50, crc=7, error=error)
    for _ in feed:
        break  # a staging thread that failed on its first chunk (a full disk)
    feed.drain()
    producer.join(5)
    assert not producer.is_alive()
    assert feed.declared_crc == (7 if ending == "end" else None)
    assert list(feed) == []  # over: a second reader gets nothing and does not wait
