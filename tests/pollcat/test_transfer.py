"""The per-file engine on real local and memory filesystems, with misbehaving sources."""

from __future__ import annotations

import errno
import http.client
import os
import threading
import time
import uuid
import zlib
from dataclasses import replace
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from pollcat import transfer
from pollcat.errors import (
    ChecksumMismatch,
    ResumeNotSupported,
    SizeMismatch,
    TargetError,
    TargetUnavailable,
    TransientError,
    UnsafePathError,
    UnsafeTargetPath,
)
from pollcat.storage import link_or_copy
from pollcat.targetfs import LocalTarget
from pollcat.targetfs import open_target as T
from pollcat.transfer import (
    FileJob,
    FileResult,
    Reopen,
    crc_matches,
    run_jobs,
    write_file,
    write_stream_entry,
)

pytestmark = pytest.mark.unit

DATA = os.urandom(3 * (1 << 20) + 12345)


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    """Reopen at once in these tests; the delays themselves are checked separately."""
    slept: list[float] = []
    monkeypatch.setattr("pollcat.transfer._sleep", slept.append)
    return slept


def part_name(final: str) -> str:
    """Where a job's part file is: `<root>/.pollcat/<datafile id>.pollcat-part` (id 7)."""
    root = final.split("/alice/")[0]
    return f"{root}/.pollcat/7.pollcat-part"


def make_staging(fs, root) -> None:
    """The staging directory as pollcat makes it (0700), for tests that plant a part file."""
    if hasattr(fs, "local_file") or fs.protocol in ("file", ("file", "local")):
        os.makedirs(f"{root}/.pollcat", mode=0o700, exist_ok=True)
    else:
        fs.makedirs(f"{root}/.pollcat", exist_ok=True)


def hexcrc(data: bytes) -> str:
    """As ICAT stores it: Java Long.toHexString, no zero padding."""
    return format(zlib.crc32(data), "x")


class FakeSource:
    """A Readable over bytes that can break after `fail_after` bytes (per connection)."""

    def __init__(self, data: bytes, offset: int, fail_after: int | None,
                 exc: BaseException):
        self.data, self.pos, self.left, self.exc = data, offset, fail_after, exc
        self.closed = False

    def read(self, n: int) -> bytes:
        if self.left is not None and self.left <= 0:
            raise self.exc
        if self.left is not None:
            n = min(n, self.left)
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        if self.left is not None:
            self.left -= len(out)
        return out

    def close(self) -> None:
        self.closed = True


class Server:
    """Opens FakeSources; `breaks` lists how many bytes each connection delivers first."""

    def __init__(self, data: bytes = DATA, breaks: list[int] | None = None,
                 exc: BaseException | None = None, honour_range: bool = True):
        self.data, self.breaks = data, list(breaks or [])
        self.exc = exc or ConnectionResetError("connection reset by peer")
        self.honour_range = honour_range
        self.opens: list[int] = []
        self.sources: list[FakeSource] = []

    def __call__(self, offset: int) -> FakeSource:
        self.opens.append(offset)
        if offset and not self.honour_range:
            raise ResumeNotSupported("200 instead of 206")
        src = FakeSource(self.data, offset, self.breaks.pop(0) if self.breaks else None,
                         self.exc)
        self.sources.append(src)
        return src


def make_job(server=None, data: bytes = DATA, rel: str = "alice/dl/ds/sub/file.nxs",
             checksum: str | None = "auto") -> FileJob:
    return FileJob(datafile_id=7, name="sub/file.nxs", rel_path=rel, size=len(data),
                   checksum=hexcrc(data) if checksum == "auto" else checksum,
                   open=server if server is not None else Server(data))


@pytest.fixture(params=["local", "memory"])
def target(request, tmp_path):
    """(fs, root) pairs: a real directory and a fresh in-memory filesystem."""
    if request.param == "local":
        yield fsspec.filesystem("file"), str(tmp_path / "target")
        return
    fs = MemoryFileSystem()
    root = f"/target-{uuid.uuid4().hex}"
    yield fs, root
    if fs.exists(root):
        fs.rm(root, recursive=True)


def all_files(fs, root) -> list[str]:
    return sorted(p[len(root.rstrip("/")) + 1:] for p in fs.find(root)) if fs.exists(root) else []


def test_crc_matches_without_zero_padding():
    data = b"x" * 10
    crc = zlib.crc32(b"\x00\x00\x01")  # any value; check the padding rule below
    assert crc_matches(format(crc, "x"), crc)
    assert crc_matches(format(crc, "08x"), crc)
    assert crc_matches("ff", 0xFF) and crc_matches("0000ff", 0xFF) and crc_matches("FF", 255)
    assert not crc_matches("fe", 0xFF)
    assert crc_matches(None, zlib.crc32(data))  # nothing to compare: size still checked
    assert crc_matches("d41d8cd98f00b204e9800998ecf8427e", 1)  # an MD5 is not a CRC32


def test_fresh_download(target):
    fs, root = target
    progress = []
    result = write_file(T(fs, root), make_job(), chunk=1 << 20, on_progress=progress.append)
    assert fs.cat(f"{root}/alice/dl/ds/sub/file.nxs") == DATA
    assert all_files(fs, root) == ["alice/dl/ds/sub/file.nxs"]
    assert result == FileResult(7, "alice/dl/ds/sub/file.nxs", len(DATA), result.seconds,
                                zlib.crc32(DATA), skipped=False, resumed=0, fetched=len(DATA))
    assert sum(progress) == len(DATA) and max(progress) <= 1 << 20


def test_existing_verified_file_is_skipped_without_fetching(target):
    fs, root = target
    write_file(T(fs, root), make_job())
    server = Server()
    result = write_file(T(fs, root), make_job(server))
    assert result.skipped and result.crc32 == zlib.crc32(DATA) and result.fetched == 0
    assert server.opens == []


def test_wrong_existing_file_is_replaced_not_duplicated(target):
    fs, root = target
    final = f"{root}/alice/dl/ds/sub/file.nxs"
    fs.makedirs(f"{root}/alice/dl/ds/sub", exist_ok=True)
    fs.pipe(final, b"old version of the file")
    result = write_file(T(fs, root), make_job())
    assert not result.skipped
    assert fs.cat(final) == DATA
    assert all_files(fs, root) == ["alice/dl/ds/sub/file.nxs"]
    # same size, wrong bytes: also replaced
    fs.pipe(final, bytes(len(DATA)))
    assert not write_file(T(fs, root), make_job()).skipped
    assert fs.cat(final) == DATA


@pytest.mark.parametrize("exc", [
    ConnectionResetError("reset"),
    http.client.IncompleteRead(b"partial"),
    TimeoutError("read timed out"),
    TransientError("503 while streaming"),
])
def test_broken_connection_resumes_at_offset(target, exc):
    fs, root = target
    server = Server(breaks=[1_000_000, 5, 1_500_000], exc=exc)
    result = write_file(T(fs, root), make_job(server))
    assert server.opens == [0, 1_000_000, 1_000_005, 2_500_005]
    assert all(s.closed for s in server.sources)
    assert result.resumed == 3 and result.fetched == len(DATA)
    assert fs.cat(f"{root}/alice/dl/ds/sub/file.nxs") == DATA
    assert all_files(fs, root) == ["alice/dl/ds/sub/file.nxs"]


def test_too_many_breaks_gives_up_and_keeps_part(target):
    fs, root = target
    server = Server(breaks=[100_000] * 10)
    with pytest.raises(TransientError) as info:
        write_file(T(fs, root), make_job(server), reopen=Reopen(max_resumes=2))
    assert "sub/file.nxs" in str(info.value)
    assert len(server.opens) == 3
    part = part_name(f"{root}/alice/dl/ds/sub/file.nxs")
    assert fs.cat(part) == DATA[:300_000]
    assert not fs.exists(f"{root}/alice/dl/ds/sub/file.nxs")
    # the next attempt continues from the part file
    server2 = Server()
    result = write_file(T(fs, root), make_job(server2))
    assert server2.opens == [300_000]
    assert result.resumed == 1 and result.fetched == len(DATA) - 300_000
    assert fs.cat(f"{root}/alice/dl/ds/sub/file.nxs") == DATA
    assert all_files(fs, root) == ["alice/dl/ds/sub/file.nxs"]


def test_part_file_left_by_crash_is_continued(target):
    fs, root = target
    make_staging(fs, root)
    fs.pipe(part_name(f"{root}/alice/dl/ds/sub/file.nxs"), DATA[:1_234_567])
    server = Server()
    result = write_file(T(fs, root), make_job(server))
    assert server.opens == [1_234_567]
    assert result.crc32 == zlib.crc32(DATA)
    assert fs.cat(f"{root}/alice/dl/ds/sub/file.nxs") == DATA
    assert all_files(fs, root) == ["alice/dl/ds/sub/file.nxs"]


def test_stale_part_with_wrong_bytes_fails_then_recovers(target):
    fs, root = target
    make_staging(fs, root)
    part = part_name(f"{root}/alice/dl/ds/sub/file.nxs")
    fs.pipe(part, b"\0" * 1000)  # from another version of the file
    with pytest.raises(ChecksumMismatch):
        write_file(T(fs, root), make_job())
    assert not fs.exists(part)
    write_file(T(fs, root), make_job())
    assert fs.cat(f"{root}/alice/dl/ds/sub/file.nxs") == DATA


def test_oversized_part_restarts(target):
    fs, root = target
    make_staging(fs, root)
    fs.pipe(part_name(f"{root}/alice/dl/ds/sub/file.nxs"), DATA + b"extra")
    server = Server()
    write_file(T(fs, root), make_job(server))
    assert server.opens == [0]
    assert fs.cat(f"{root}/alice/dl/ds/sub/file.nxs") == DATA


class NoAppendMemoryFS(MemoryFileSystem):
    """A target that cannot append (like many object stores)."""

    def _open(self, path, mode="rb", **kwargs):
        if "a" in mode:
            raise NotImplementedError("append")
        return super()._open(path, mode, **kwargs)


def test_part_file_on_fs_without_append_restarts():
    fs = NoAppendMemoryFS(skip_instance_cache=True)
    root = f"/t-{uuid.uuid4().hex}"
    make_staging(fs, root)
    fs.pipe(part_name(f"{root}/alice/dl/ds/sub/file.nxs"), DATA[:1000])
    server = Server()
    result = write_file(T(fs, root), make_job(server))
    assert server.opens == [0] and result.resumed == 0
    assert fs.cat(f"{root}/alice/dl/ds/sub/file.nxs") == DATA
    assert all_files(fs, root) == ["alice/dl/ds/sub/file.nxs"]
    fs.rm(root, recursive=True)


def test_server_ignoring_range_restarts_from_zero(target):
    fs, root = target
    server = Server(breaks=[500_000], honour_range=False)
    progress = []
    result = write_file(T(fs, root), make_job(server), on_progress=progress.append)
    assert server.opens == [0, 500_000, 0]
    assert result.fetched == 500_000 + len(DATA)
    assert sum(progress) == len(DATA)
    assert fs.cat(f"{root}/alice/dl/ds/sub/file.nxs") == DATA


def test_checksum_mismatch_deletes_part(target):
    fs, root = target
    job = make_job(checksum=hexcrc(DATA + b"!"))
    with pytest.raises(ChecksumMismatch) as info:
        write_file(T(fs, root), job)
    assert info.value.datafile == "sub/file.nxs"
    assert "sub/file.nxs" in str(info.value)
    assert [p for p in all_files(fs, root) if "pollcat-part" in p or "file.nxs" in p] == []


def test_short_source_is_size_mismatch(target):
    fs, root = target
    job = replace(make_job(), size=len(DATA) + 10)
    with pytest.raises(SizeMismatch):
        write_file(T(fs, root), job)
    assert all_files(fs, root) == []


def test_long_source_stops_early_and_is_size_mismatch(target):
    fs, root = target
    job = replace(make_job(), size=1000, checksum=hexcrc(DATA[:1000]))
    with pytest.raises(SizeMismatch):
        write_file(T(fs, root), job)
    assert all_files(fs, root) == []


def test_no_checksum_checks_size_only(target):
    fs, root = target
    result = write_file(T(fs, root), make_job(checksum=None))
    assert result.crc32 == zlib.crc32(DATA)


def test_leading_zero_crc_accepted(target):
    fs, root = target
    data = next(d for i in range(10_000)
                if zlib.crc32(d := f"payload {i}".encode()) < 0x10000000)
    job = make_job(data=data, checksum=format(zlib.crc32(data), "x"))
    assert len(job.checksum) < 8
    assert write_file(T(fs, root), job).crc32 == zlib.crc32(data)


@pytest.mark.parametrize("rel", ["../escape.txt", "alice/../../x", "/etc/passwd", "a//b",
                                 "a/./b", "a\\b", "a/b\x00c", "a/\x7f", "a/\x85x"])
def test_refuses_unsafe_paths(target, rel):
    fs, root = target
    server = Server()
    with pytest.raises(UnsafePathError):
        write_file(T(fs, root), make_job(server, rel=rel))
    assert server.opens == []
    assert all_files(fs, root) == []


def test_refuses_symlink_escape(tmp_path):
    fs = fsspec.filesystem("file")
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "target"
    (root / "alice").mkdir(parents=True)
    (root / "alice" / "dl").symlink_to(outside)
    with pytest.raises(UnsafeTargetPath) as info:
        write_file(T(fs, str(root)), make_job(rel="alice/dl/x.bin"))
    assert f"{root}/alice/dl" in str(info.value) and "symbolic link" in str(info.value)
    assert list(outside.iterdir()) == []


class RefusingTarget(LocalTarget):
    """A local target whose file creation fails like a read-only dir, full disk or quota."""

    def __init__(self, root: str, err: int):
        super().__init__(root)
        self.err = err

    def create(self, rel):
        raise OSError(self.err, os.strerror(self.err), rel)


@pytest.mark.parametrize(("err", "family"), [
    (errno.EACCES, TargetError), (errno.EROFS, TargetUnavailable),
    (errno.ENOSPC, TargetUnavailable), (errno.EDQUOT, TargetUnavailable)])
def test_refusing_target_maps_to_its_family(tmp_path, err, family):
    with pytest.raises(family) as info:
        write_file(RefusingTarget(str(tmp_path), err), make_job())
    assert info.value.datafile == "sub/file.nxs"
    assert isinstance(info.value, TransientError) == (family is TargetUnavailable)
    assert not list(tmp_path.rglob("*.pollcat-part"))


def test_permission_error_on_makedirs_is_target_error(tmp_path):
    class NoMkdir(LocalTarget):
        def make_dirs(self, rel):
            raise PermissionError(errno.EACCES, "Permission denied", rel)

    with pytest.raises(TargetError):
        write_file(NoMkdir(str(tmp_path)), make_job())


def test_target_full_mid_write_removes_the_part(tmp_path):
    class FillsUp(LocalTarget):
        def create(self, rel):
            f = super().create(rel)
            real = f.write

            def write(data):
                if f.tell() > 1_000_000:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return real(data)

            f.write = write
            return f

    with pytest.raises(TargetUnavailable) as info:
        write_file(FillsUp(str(tmp_path)), make_job())
    assert "sub/file.nxs" in str(info.value) and "No space left" in str(info.value)
    assert not list(tmp_path.rglob("*.pollcat-part"))
    assert not (tmp_path / "alice/dl/ds/sub/file.nxs").exists()


# --- zip entries ----------------------------------------------------------------------------


def pieces(data: bytes, n: int = 100_000):
    for i in range(0, len(data), n):
        yield data[i:i + n]


def test_stream_entry(target):
    fs, root = target
    job = make_job(Server())
    job = replace(job, open=None)
    result = write_stream_entry(T(fs, root), job, pieces(DATA))
    assert result.crc32 == zlib.crc32(DATA) and not result.skipped
    assert fs.cat(f"{root}/alice/dl/ds/sub/file.nxs") == DATA
    again = write_stream_entry(T(fs, root), job, pieces(DATA))
    assert again.skipped
    assert all_files(fs, root) == ["alice/dl/ds/sub/file.nxs"]


def test_stream_entry_mismatch_and_failure_leave_nothing(target):
    fs, root = target
    job = replace(make_job(), open=None)
    with pytest.raises(ChecksumMismatch):
        write_stream_entry(T(fs, root), job, pieces(DATA[:-1] + b"?"))
    assert all_files(fs, root) == []

    def broken():
        yield DATA[:1000]
        raise TransientError("zip stream ended")

    with pytest.raises(TransientError):
        write_stream_entry(T(fs, root), job, broken())
    assert not [p for p in all_files(fs, root) if p.endswith("file.nxs") or "part" in p]


def test_zip_stream_into_target(target):
    """The whole zip path: an unseekable IDS-style zip, unpacked entry by entry onto the target."""
    import io
    import zipfile

    from pollcat.unzip import iter_entries

    files = {"ids/LILS/INV/1/ds/a.bin": os.urandom(300_000), "ids/LILS/INV/1/ds/d/b.txt": b"b"}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=0) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    fs, root = target
    results = []
    for i, entry in enumerate(iter_entries(io.BytesIO(buf.getvalue()).read)):
        data = files[entry.name]
        rel = "alice/dl/" + entry.name.split("/", 5)[5]
        job = FileJob(i, entry.name, rel, len(data), hexcrc(data))
        results.append(write_stream_entry(T(fs, root), job, entry.iter_chunks()))
    assert [r.bytes for r in results] == [300_000, 1]
    assert all_files(fs, root) == ["alice/dl/a.bin", "alice/dl/d/b.txt"]
    assert fs.cat(f"{root}/alice/dl/a.bin") == files["ids/LILS/INV/1/ds/a.bin"]


# --- main storage mounted -------------------------------------------------------------------


def test_link_same_device(tmp_path):
    fs = fsspec.filesystem("file")
    src = tmp_path / "main" / "f.nxs"
    src.parent.mkdir()
    src.write_bytes(DATA)
    root = tmp_path / "target"
    result = link_or_copy(fs, str(src), T(fs, str(root)), make_job())
    final = root / "alice/dl/ds/sub/file.nxs"
    assert final.read_bytes() == DATA
    assert os.path.samefile(src, final) and result.fetched == 0
    assert link_or_copy(fs, str(src), T(fs, str(root)), make_job()).skipped
    assert sorted(p.name for p in final.parent.iterdir()) == ["file.nxs"]


def test_link_refuses_wrong_source(tmp_path):
    fs = fsspec.filesystem("file")
    src = tmp_path / "f.nxs"
    src.write_bytes(DATA[:-1] + b"?")
    with pytest.raises(ChecksumMismatch):
        link_or_copy(fs, str(src), T(fs, str(tmp_path / "t")), make_job())
    assert not (tmp_path / "t/alice/dl/ds/sub/file.nxs").exists()


def test_copy_when_no_hardlink_or_other_fs(tmp_path, target):
    local = fsspec.filesystem("file")
    src = tmp_path / "f.nxs"
    src.write_bytes(DATA)
    fs, root = target
    result = link_or_copy(local, str(src), T(fs, root), make_job(), hardlink=False)
    assert result.fetched == len(DATA)
    assert fs.cat(f"{root}/alice/dl/ds/sub/file.nxs") == DATA
    if fs is local:
        assert not os.path.samefile(src, Path(root) / "alice/dl/ds/sub/file.nxs")


def test_copy_falls_back_when_link_fails(tmp_path, monkeypatch):
    fs = fsspec.filesystem("file")
    src = tmp_path / "f.nxs"
    src.write_bytes(DATA)

    def no_link(*args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    result = link_or_copy(fs, str(src), T(fs, str(tmp_path / "t")), make_job())
    assert result.fetched == len(DATA)
    assert (tmp_path / "t/alice/dl/ds/sub/file.nxs").read_bytes() == DATA


# --- many files -----------------------------------------------------------------------------


def test_run_jobs_bounded_ordered_isolated(target):
    fs, root = target
    datas = [os.urandom(50_000 + i) for i in range(12)]
    jobs = [FileJob(i, f"f{i}", f"alice/dl/f{i}.bin", len(d), hexcrc(d), Server(d))
            for i, d in enumerate(datas)]
    jobs[3] = replace(jobs[3], checksum="1")  # wrong
    jobs[5] = replace(jobs[5], rel_path="../evil")
    lock, active, peak = threading.Lock(), [0], [0]

    def fn(job):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            time.sleep(0.02)
            return write_file(T(fs, root), job)
        finally:
            with lock:
                active[0] -= 1

    results = run_jobs(jobs, fn, concurrency=3)
    assert peak[0] <= 3
    assert isinstance(results[3], ChecksumMismatch) and results[3].datafile == "f3"
    assert isinstance(results[5], UnsafePathError) and results[5].datafile == "f5"
    for i, r in enumerate(results):
        if i not in (3, 5):
            assert isinstance(r, FileResult) and r.datafile_id == i
            assert fs.cat(f"{root}/alice/dl/f{i}.bin") == datas[i]
    assert len(all_files(fs, root)) == 10
    assert run_jobs([], fn, concurrency=2) == []


# --- backoff, service answers, part names ---------------------------------------------------


def test_reopenings_back_off_exponentially(target, no_backoff):
    fs, root = target
    server = Server(breaks=[100_000] * 4)
    write_file(T(fs, root), make_job(server),
               reopen=Reopen(max_resumes=5, first_delay_s=0.5, max_delay_s=3))
    assert no_backoff == [0.5, 1.0, 2.0, 3.0]  # capped at max_delay_s
    assert Reopen().delay(1) > 0  # the default never reopens in a tight loop


@pytest.mark.parametrize("answer", [
    TransientError("IDS 500", service="IDS", status=500),
    TransientError("IDS 503", service="IDS", status=503),
])
def test_a_service_answer_on_reopen_is_not_a_broken_connection(target, no_backoff, answer):
    """A status-bearing error is the service answering: raised at once, part kept."""
    fs, root = target

    class AnswersAfterBreak(Server):
        def __call__(self, offset):
            if self.opens:
                self.opens.append(offset)
                raise answer
            return super().__call__(offset)

    server = AnswersAfterBreak(breaks=[200_000])
    with pytest.raises(TransientError) as info:
        write_file(T(fs, root), make_job(server))
    assert info.value is answer and server.opens == [0, 200_000]
    assert fs.cat(part_name(f"{root}/alice/dl/ds/sub/file.nxs")) == DATA[:200_000]


def test_a_datafile_named_like_a_part_file_cannot_swap_bytes(target):
    """The issue's case: `x` (large) and `.x.pollcat-part` (13 bytes) in one directory. Part
    files used to be `.x.pollcat-part` next to `x`, so one overwrote the other."""
    fs, root = target
    big, small = os.urandom(2_000_000), b"thirteen byte"
    jobs = [FileJob(1, "x", "alice/dl/ds/x", len(big), hexcrc(big), Server(big)),
            FileJob(2, ".x.pollcat-part", "alice/dl/ds/.x.pollcat-part", len(small),
                    hexcrc(small), Server(small))]
    results = run_jobs(jobs, lambda j: write_file(T(fs, root), j, staging="alice/dl/.pollcat"),
                       concurrency=2)
    assert all(isinstance(r, FileResult) for r in results), results
    assert fs.cat(f"{root}/alice/dl/ds/x") == big
    assert fs.cat(f"{root}/alice/dl/ds/.x.pollcat-part") == small
    assert all_files(fs, root) == ["alice/dl/ds/.x.pollcat-part", "alice/dl/ds/x"]


def test_placed_bytes_are_read_back_before_the_rename(tmp_path, monkeypatch):
    """On a local target the CRC32 that decides is read from the part file itself: a part
    changed on disk after streaming (a stalled former owner, a bad disk) is never placed."""
    class Scribbled(LocalTarget):
        def replace(self, src, dst, **kw):
            raise AssertionError("must not place")

    real = transfer.crc_of_file

    def scribbled_first(f):
        for part in tmp_path.rglob("*.pollcat-part"):
            with open(part, "r+b") as other:  # another writer, not the part writer's handle
                other.write(b"\0" * 8)
        return real(f)

    monkeypatch.setattr(transfer, "crc_of_file", scribbled_first)
    with pytest.raises(ChecksumMismatch):
        write_file(Scribbled(str(tmp_path)), make_job())
    assert not list(tmp_path.rglob("*.pollcat-part"))


def test_a_fresh_delivery_lists_each_directory_once_instead_of_opening_every_name(tmp_path):
    """No failed open per file for the final name and the part file (two per file before, each
    a round trip on SFTP); a second attempt at a file in the same delivery still resumes."""
    tfs = LocalTarget(str(tmp_path / "target"))
    opened: list[str] = []
    real = tfs.open_read
    tfs.open_read = lambda rel: opened.append(rel) or real(rel)  # type: ignore[method-assign]
    data = [os.urandom(1000 + i) for i in range(20)]
    for i, d in enumerate(data):
        job = replace(make_job(data=d, rel=f"alice/dl/ds/f{i}"), datafile_id=100 + i)
        assert write_file(tfs, job, staging="alice/dl/.pollcat").bytes == len(d)
    # not even for the re-read of each part before placement: the part writer's own
    # descriptor is read back (so a fresh file costs no open by name at all)
    assert opened == []

    # the same delivery tries one file again after its connection broke: it opens the part
    server = Server(DATA, breaks=[1 << 20])
    job = replace(make_job(server, rel="alice/dl/ds/big"), datafile_id=7)
    with pytest.raises(TransientError):
        write_file(tfs, job, staging="alice/dl/.pollcat", reopen=Reopen(max_resumes=0))
    opened.clear()
    result = write_file(tfs, job, staging="alice/dl/.pollcat")
    assert server.opens == [0, 1 << 20] and result.fetched == len(DATA) - (1 << 20)
    assert "alice/dl/.pollcat/7.pollcat-part" in opened[:2]
    assert (tmp_path / "target/alice/dl/ds/big").read_bytes() == DATA
