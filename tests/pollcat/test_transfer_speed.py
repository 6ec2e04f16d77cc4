"""The speed work keeps the guarantees: overlapped writing, early writeback, one sync per batch,
kept directory descriptors, the fast CRC32 and the narrowed discovery query."""

from __future__ import annotations

import errno
import os
import threading
import zlib
from types import SimpleNamespace

import pytest

from pollcat import crcread
from pollcat.errors import TargetUnavailable, UnsafeTargetPath
from pollcat.overlap import overlapped
from pollcat.targetfs import LocalTarget
from pollcat.targetfs.dircache import DirCache
from pollcat.transfer import FileJob, FileResult, run_file_jobs, synced_once, write_file
from tests.pollcat.test_transfer import Server, hexcrc

pytestmark = pytest.mark.unit

BIG = os.urandom((8 << 20) + 777_777)  # above OVERLAP_MIN: written on a second thread


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr("pollcat.transfer._sleep", lambda s: None)


def big_job(server: Server, rel: str = "alice/dl/ds/big.raw", datafile_id: int = 9) -> FileJob:
    return FileJob(datafile_id, "big.raw", rel, len(BIG), hexcrc(BIG), server)


# --- overlap --------------------------------------------------------------------------------


def test_overlapped_consumes_every_chunk_in_order():
    got: list[bytes] = []
    overlapped((bytes([i]) * 10 for i in range(100)), got.append, depth=2)
    assert got == [bytes([i]) * 10 for i in range(100)]


def test_a_reader_error_comes_after_every_chunk_read_before_it():
    got: list[bytes] = []

    def chunks():
        yield b"a"
        yield b"b"
        raise ConnectionResetError("cut")

    with pytest.raises(ConnectionResetError):
        overlapped(chunks(), got.append)
    assert got == [b"a", b"b"]  # the consumer's offset is exact for a resume


def test_a_consumer_error_stops_the_reader_and_is_raised():
    read = []

    def chunks():
        for i in range(1000):
            read.append(i)
            yield b"x"

    def consume(_data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        overlapped(chunks(), consume, depth=2)
    assert len(read) < 1000


# --- large files: overlap, resume, full disk ------------------------------------------------


def test_a_large_file_is_delivered_and_verified(tmp_path):
    result = write_file(LocalTarget(str(tmp_path)), big_job(Server(BIG)))
    assert isinstance(result, FileResult) and result.crc32 == zlib.crc32(BIG)
    assert (tmp_path / "alice/dl/ds/big.raw").read_bytes() == BIG
    assert not list(tmp_path.rglob("*.pollcat-part"))


def test_a_large_file_resumes_at_the_exact_offset_after_a_break(tmp_path):
    server = Server(BIG, breaks=[3_000_001, 2_500_000])
    result = write_file(LocalTarget(str(tmp_path)), big_job(server))
    assert server.opens == [0, 3_000_001, 5_500_001]
    assert result.resumed == 2
    assert (tmp_path / "alice/dl/ds/big.raw").read_bytes() == BIG


def test_a_full_disk_during_an_overlapped_write_removes_the_part(tmp_path):
    class FillsUp(LocalTarget):
        def create(self, rel):
            f = super().create(rel)
            real = f.write

            def write(data):
                if f.tell() > 5_000_000:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return real(data)

            f.write = write
            return f

    with pytest.raises(TargetUnavailable):
        write_file(FillsUp(str(tmp_path)), big_job(Server(BIG)))
    assert not list(tmp_path.rglob("*.pollcat-part"))
    assert not (tmp_path / "alice/dl/ds/big.raw").exists()


def test_bytes_reach_the_part_file_in_write_calls_of_at_most_128_kib(tmp_path):
    """Large write calls stall in the page-cache copy on a VM whose host must back freed memory
    again (`transfer.WRITE_SLICE`); every byte still arrives, in order."""
    sizes: list[int] = []

    class Records(LocalTarget):
        def create(self, rel):
            f = super().create(rel)
            real = f.write

            def write(data):
                sizes.append(len(data))
                return real(data)

            f.write = write
            return f

    write_file(Records(str(tmp_path)), big_job(Server(BIG)))
    assert sum(sizes) == len(BIG) and max(sizes) == 128 << 10
    assert (tmp_path / "alice/dl/ds/big.raw").read_bytes() == BIG


def test_a_part_changed_after_streaming_is_not_placed(tmp_path, monkeypatch):
    """The decisive CRC32 is still read back from the part file just before the rename (through
    the part writer's descriptor: a change made through another one is seen)."""
    from pollcat import transfer
    from pollcat.errors import ChecksumMismatch

    real = transfer.crc_of_file

    def scribbled_first(f):
        for part in tmp_path.rglob("*.pollcat-part"):
            with open(part, "r+b") as other:
                other.seek(4_000_000)
                other.write(b"\0" * 8)
        return real(f)

    monkeypatch.setattr(transfer, "crc_of_file", scribbled_first)
    with pytest.raises(ChecksumMismatch):
        write_file(LocalTarget(str(tmp_path)), big_job(Server(BIG)))
    assert not (tmp_path / "alice/dl/ds/big.raw").exists()


# --- one sync per batch ---------------------------------------------------------------------


class CountingTarget(LocalTarget):
    def __init__(self, root: str, fail: bool = False, fsyncs: list | None = None):
        super().__init__(root)
        self.syncs, self.fail = 0, fail
        self.fsyncs, self.fsyncs_before_sync = fsyncs, None

    def sync(self) -> None:
        self.syncs += 1
        if self.fsyncs is not None:
            self.fsyncs_before_sync = len(self.fsyncs)
        if self.fail:
            raise OSError(errno.EIO, "Input/output error")
        super().sync()


def _recording_fsync(monkeypatch) -> list[tuple[str, int]]:
    """(thread name, inode) of every fsync from now on."""
    fsyncs: list[tuple[str, int]] = []
    real_fsync = os.fsync

    def fsync(fd):
        fsyncs.append((threading.current_thread().name, os.fstat(fd).st_ino))
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    return fsyncs


def _batch(target, tmp_path, n):
    data = [os.urandom(1000 + i) for i in range(n)]
    jobs = [FileJob(i, f"f{i}", f"alice/dl/ds/f{i}", len(d), hexcrc(d), Server(d))
            for i, d in enumerate(data)]
    results = run_file_jobs(target, jobs, lambda j: write_file(
        target, j, staging="alice/dl/.pollcat"), concurrency=3)
    assert all(isinstance(r, FileResult) for r in results), results
    for i, d in enumerate(data):
        assert (tmp_path / f"alice/dl/ds/f{i}").read_bytes() == d
    return data


def test_a_batch_is_synced_once_instead_of_an_fsync_per_file(tmp_path, monkeypatch):
    """No worker waits for an fsync: each placed file is fsynced once, through the part writer's
    descriptor, on the target's sync threads while the batch goes on; the batch's one sync waits
    for them and adds the directory."""
    fsyncs = _recording_fsync(monkeypatch)
    target = CountingTarget(str(tmp_path), fsyncs=fsyncs)
    _batch(target, tmp_path, 5)
    assert target.syncs == 1 and not target.sync_deferred
    assert all(name.startswith("pollcat-sync") for name, _ in fsyncs), fsyncs
    files = {os.stat(tmp_path / f"alice/dl/ds/f{i}").st_ino for i in range(5)}
    directory = os.stat(tmp_path / "alice/dl/ds").st_ino
    assert sorted(ino for _, ino in fsyncs) == sorted(files | {directory})


def test_beyond_the_limit_placed_files_are_fsynced_by_name_at_the_end(tmp_path, monkeypatch):
    """A slow disk cannot make pollcat hold a descriptor per placed file: past the limit the
    descriptor is closed at once and the file is opened again for the batch's sync."""
    fsyncs = _recording_fsync(monkeypatch)
    target = CountingTarget(str(tmp_path), fsyncs=fsyncs)
    target._ahead.limit = 0
    opened = []
    real = target.open_read
    target.open_read = lambda rel: opened.append(rel) or real(rel)
    _batch(target, tmp_path, 4)
    assert sorted(opened) == [f"alice/dl/ds/f{i}" for i in range(4)]
    assert len(fsyncs) == 4 + 1


def test_a_failed_fsync_ahead_fails_the_batchs_sync_with_the_files_name(tmp_path, monkeypatch):
    """An fsync error is never retried into a false success (after EIO the kernel may report
    the pages clean): the batch's sync raises it, and no manifest follows."""
    from pollcat.errors import TransientError

    real_fsync = os.fsync

    def failing(fd):
        if threading.current_thread().name.startswith("pollcat-sync"):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", failing)
    target = LocalTarget(str(tmp_path))
    with pytest.raises(TransientError, match=r"Input/output.*big\.raw|big\.raw.*Input/output"), \
            synced_once(target):
        write_file(target, big_job(Server(BIG)))


def test_a_failed_sync_is_raised_as_the_targets_error(tmp_path):
    """(EIO is transient; no manifest is written after it.)"""
    from pollcat.errors import TransientError

    target = CountingTarget(str(tmp_path), fail=True)
    with pytest.raises(TransientError, match="Input/output"), synced_once(target):
        write_file(target, big_job(Server(BIG)))


# --- kept directory descriptors -------------------------------------------------------------


def test_a_directory_swapped_for_a_symlink_is_refused_after_being_kept(tmp_path):
    root, outside = tmp_path / "target", tmp_path / "outside"
    outside.mkdir()
    target = LocalTarget(str(root))
    target.make_dirs("alice/dl/ds")
    with target.create("alice/dl/ds/first") as f:  # the walk keeps ds's descriptor
        f.write(b"1")
    os.rename(root / "alice/dl/ds", root / "alice/dl/moved")
    (root / "alice/dl/ds").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafeTargetPath):
        target.create("alice/dl/ds/second")
    assert list(outside.iterdir()) == []


def test_a_directory_replaced_by_another_is_walked_afresh(tmp_path):
    root = tmp_path / "target"
    target = LocalTarget(str(root))
    target.make_dirs("alice/dl/ds")
    assert target.list_names("alice/dl/ds") == []
    os.rename(root / "alice/dl/ds", root / "alice/dl/old")
    (root / "alice/dl/ds").mkdir()
    (root / "alice/dl/ds/new").write_bytes(b"n")
    assert target.list_names("alice/dl/ds") == ["new"]


def test_the_cache_is_bounded_and_closes_what_it_kept(tmp_path):
    cache = DirCache(limit=2)
    fds = [os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY) for _ in range(3)]
    kept = [cache.keep((str(i),), fd) for i, fd in enumerate(fds)]
    assert kept == [True, True, False]
    os.close(fds[2])
    cache.close()
    for fd in fds[:2]:
        with pytest.raises(OSError):
            os.fstat(fd)


# --- CRC32 ----------------------------------------------------------------------------------


def test_crc32_is_zlibs_number():
    data = os.urandom(100_003)
    assert crcread.crc32(data) == zlib.crc32(data)
    assert crcread.crc32(data, 12345) == zlib.crc32(data, 12345)


@pytest.mark.parametrize("split", [0, 1, 4096, 50_000, 100_003])
def test_crc32_combine(split):
    data = os.urandom(100_003)
    a, b = data[:split], data[split:]
    assert crcread.crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(data)


def test_the_two_thread_file_crc_equals_the_plain_one(tmp_path, monkeypatch):
    monkeypatch.setattr(crcread, "FAST", False)
    monkeypatch.setattr(crcread, "PARALLEL_MIN", 1 << 20)
    monkeypatch.setattr(crcread, "BLOCK", 64 << 10)
    path = tmp_path / "f"
    path.write_bytes(BIG)
    with open(path, "rb") as f:
        assert crcread.crc_of_file(f) == (len(BIG), zlib.crc32(BIG))


# --- the narrowed discovery query -----------------------------------------------------------


def test_pending_after_id_starts_the_keyset_paging_there():
    from pollcat.topcat import TopcatAdmin

    asked: list[str] = []

    class Fake(TopcatAdmin):
        def __init__(self):
            self.facility = "FAC"

        def _admin(self, method, path, build):
            asked.append(build("sid")["queryOffset"])
            return SimpleNamespace(content=b"[]")

    Fake().pending("globus", "COMPLETE", after_id=41)
    Fake().downloads("globus")
    assert "and download.id > 41 order by download.id asc" in asked[0]
    assert "download.status" in asked[0] and "download.status" not in asked[1]
    assert "and download.id > 0 order by download.id asc" in asked[1]


# --- early writeback ------------------------------------------------------------------------


def test_writeback_keeps_depth_windows_in_flight_and_no_more(monkeypatch):
    """Each full window's writeback starts at once; the window `depth` back is waited for, so
    the disk has a queue to work on while dirty memory stays bounded at depth + 1 windows."""
    from pollcat.targetfs import writeback

    calls: list[tuple[int, int, int]] = []
    monkeypatch.setattr(writeback, "_sync_file_range",
                        lambda fd, off, n, flags: calls.append((off, n, flags)))
    w = writeback.Writeback(fd=99, window=10, depth=3)
    for offset in [*range(0, 100, 7), 100]:  # writes of 7 bytes: windows end mid-write
        w.advance(offset)
    started = [off for off, n, flags in calls if flags == writeback.WRITE]
    waited = [off for off, n, flags in calls if flags & writeback.WAIT_AFTER]
    assert started == list(range(0, 100, 10))  # every full window, once, in order
    assert waited == list(range(0, 70, 10))  # each 3 windows behind the newest started
    in_flight = 0
    for _, _, flags in calls:
        in_flight += 1 if flags == writeback.WRITE else -1
        assert in_flight <= 3 + 1
    assert all(n == 10 for _, n, _ in calls)
