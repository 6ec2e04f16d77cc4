"""Zip-slip: entry names in the prepared zip never become paths. pollcat maps each entry back to
a datafile it planned from ICAT (whose path went through the layout checks) or skips it, so an
entry named `../../x`, `/etc/x` or `ids/F/I/1/ds/../../../../x` writes nothing anywhere."""

from __future__ import annotations

import io
import os
import zipfile
import zlib

import fsspec
import pytest

from pollcat.catalog import DatafileInfo
from pollcat.sources import PreparedZipSource, TransferContext
from pollcat.targetfs import open_target
from pollcat.transfer import FileJob, FileResult

# every case against both ways of resolving a path below the root (openat2, the walk)
pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("path_resolution")]

GOOD = os.urandom(50_000)
EVIL = b"ZIP-SLIP-MARKER " * 100
SLIP_NAMES = [
    "../../../evil.dat",
    "/etc/pollcat-zip-slip",
    "ids/LILS/INV/1/ds/../../../../../../evil.dat",
    "ids/LILS/INV/1/ds/sub\\..\\..\\..\\evil.dat",
    "ids/LILS/INV/1/../../../evil.dat",
    "..\\..\\evil.dat",
    "ids/LILS/INV/1/ds/\x00evil",
    "ids/LILS/INV/1/ds/" + "e" * 300,
]


class Body:
    def __init__(self, data: bytes):
        self.buf = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self.buf.read(n)

    def close(self) -> None:
        pass


class FakeIds:
    def __init__(self, data: bytes):
        self.data = data

    def get_prepared(self, prepared_id: str, offset: int = 0) -> Body:
        return Body(self.data)


def zip_of(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=0) as zf:
        for name, data in entries:
            zf.writestr(zipfile.ZipInfo(name), data)
    return buf.getvalue()


def plan(files: list[tuple[str, bytes]], *, checksums: dict[str, str | None] | None = None,
         first_id: int = 0) -> tuple[list[FileJob], dict[int, DatafileInfo]]:
    """Jobs and ICAT rows for datafiles `files` (name, bytes) of dataset LILS/INV/1/ds; ICAT's
    checksum is the bytes' CRC32 unless `checksums` names another (or None)."""
    jobs, infos = [], {}
    for i, (name, payload) in enumerate(files, start=first_id):
        crc = (checksums or {}).get(name, format(zlib.crc32(payload), "x"))
        jobs.append(FileJob(i, name, f"alice/dl/INV/1/ds/{name}", len(payload), crc))
        infos[i] = DatafileInfo(id=i, name=name, size=len(payload), checksum=crc,
                                location=None, dataset_id=2, dataset="ds", investigation_id=3,
                                investigation="INV", visit="1", facility="LILS")
    return jobs, infos


def context(root, ids, **kwargs) -> TransferContext:
    return TransferContext(download_id=1, prepared_id="p", ids=ids, session_id=lambda: "s",
                           target=open_target(fsspec.filesystem("file"), str(root)),
                           staging="alice/dl/.pollcat", concurrency=1, **kwargs)


@pytest.mark.parametrize("evil", SLIP_NAMES, ids=range(len(SLIP_NAMES)))
@pytest.mark.parametrize("order", ["evil-first", "evil-last"])
def test_zip_slip_entries_are_skipped(tmp_path, evil, order):
    entries = [(evil, EVIL), ("ids/LILS/INV/1/ds/good.dat", GOOD)]
    if order == "evil-last":
        entries.reverse()
    root = tmp_path / "base" / "target"
    tfs = open_target(fsspec.filesystem("file"), str(root))
    job = FileJob(11, "good.dat", "alice/dl/INV/1/ds/good.dat", len(GOOD),
                  format(zlib.crc32(GOOD), "x"))
    infos = {11: DatafileInfo(id=11, name="good.dat", size=len(GOOD), checksum=job.checksum,
                              location=None, dataset_id=2, dataset="ds", investigation_id=3,
                              investigation="INV", visit="1", facility="LILS")}
    ctx = TransferContext(download_id=1, prepared_id="p", ids=FakeIds(zip_of(entries)),
                          session_id=lambda: "s", target=tfs, staging="alice/dl/.pollcat",
                          concurrency=1)
    (result,) = PreparedZipSource().transfer(ctx, [job], infos)
    assert isinstance(result, FileResult), result
    assert (root / "alice/dl/INV/1/ds/good.dat").read_bytes() == GOOD
    leaked = [p for p in (tmp_path / "base").rglob("*")
              if p.is_file() and EVIL[:16] in p.read_bytes()]
    assert leaked == []
    assert not os.path.exists("/etc/pollcat-zip-slip")
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
        "alice/dl/INV/1/ds/good.dat"]


def test_entries_are_placed_while_the_next_ones_stream_and_a_bad_one_restarts_the_pass(
        tmp_path):
    """Entry N is verified and placed on another thread while N+1 is read; every good entry
    ends placed and verified, progress counts each once, and an entry whose bytes disagree
    with ICAT (the last one here: it ends the pass, as before) fails it (the zip is fetched
    again, up to the restart limit) without placing it."""
    datas = [os.urandom(40_000 + i) for i in range(12)]
    entries = [(f"ids/LILS/INV/1/ds/f{i}.dat", d) for i, d in enumerate(datas)]
    root = tmp_path / "target"
    jobs, infos = plan([(f"f{i}.dat", d) for i, d in enumerate(datas)], first_id=100,
                       checksums={"f11.dat": format(zlib.crc32(b"other"), "x")})
    progress: list[int] = []
    ids = FakeIds(zip_of(entries))
    fetched = []
    real = ids.get_prepared
    ids.get_prepared = lambda pid, offset=0: fetched.append(pid) or real(pid, offset)
    ctx = context(root, ids, on_progress=progress.append)
    results = PreparedZipSource().transfer(ctx, jobs, infos)
    good = range(11)
    assert [type(results[i]).__name__ for i in good] == ["FileResult"] * 11
    assert type(results[11]).__name__ == "ChecksumMismatch"
    for i in good:
        assert (root / f"alice/dl/INV/1/ds/f{i}.dat").read_bytes() == datas[i]
    assert not (root / "alice/dl/INV/1/ds/f11.dat").exists()
    assert len(fetched) > 1  # the mismatch made the pass start again
    assert sorted(progress) == sorted(len(datas[i]) for i in good)  # each placed file once
    assert not list(root.rglob("*.pollcat-part"))


@pytest.mark.parametrize("icat_knows_the_crc", [True, False])
def test_bytes_changed_in_the_zip_are_never_placed(tmp_path, icat_knows_the_crc):
    """A flipped byte inside a DEFLATE level-0 (stored) block is still valid deflate: only a
    CRC32 can tell. The reader computes none (each byte is hashed once); the CRC32 read back
    from the part file is checked against ICAT's checksum and against the zip's, so the entry
    is refused even where ICAT has no checksum, and the good entry after it is placed."""
    bad, good = os.urandom(30_000), os.urandom(20_000)
    data = bytearray(zip_of([("ids/LILS/INV/1/ds/bad.dat", bad),
                             ("ids/LILS/INV/1/ds/good.dat", good)]))
    data[bytes(data).index(bad[:64]) + 1000] ^= 0xFF
    root = tmp_path / "target"
    jobs, infos = plan([("bad.dat", bad), ("good.dat", good)],
                       checksums=None if icat_knows_the_crc else {"bad.dat": None,
                                                                  "good.dat": None})
    ctx = context(root, FakeIds(bytes(data)))
    bad_result, good_result = PreparedZipSource().transfer(ctx, jobs, infos)
    assert type(bad_result).__name__ == "ChecksumMismatch"
    assert ("ICAT says" if icat_knows_the_crc else "the source's") in str(bad_result)
    assert isinstance(good_result, FileResult)
    assert (root / "alice/dl/INV/1/ds/good.dat").read_bytes() == good
    assert not (root / "alice/dl/INV/1/ds/bad.dat").exists()
    assert not list(root.rglob("*.pollcat-part"))


def test_a_stream_cut_inside_an_entry_keeps_what_was_placed_and_leaves_no_part(tmp_path):
    """Entries are staged on another thread while the zip is read: when the stream ends inside
    entry 3, entries 0-2 are placed and verified, 3-5 fail as truncated (every pass ends
    there), and no part file is left behind."""
    datas = [os.urandom(300_000) for _ in range(6)]
    data = zip_of([(f"ids/LILS/INV/1/ds/f{i}.dat", d) for i, d in enumerate(datas)])
    cut = data[:data.index(datas[3][:64]) + 100_000]
    root = tmp_path / "target"
    jobs, infos = plan([(f"f{i}.dat", d) for i, d in enumerate(datas)])
    results = PreparedZipSource().transfer(context(root, FakeIds(cut)), jobs, infos)
    assert [type(r).__name__ for r in results] == ["FileResult"] * 3 + ["TruncatedStream"] * 3
    for i in range(3):
        assert (root / f"alice/dl/INV/1/ds/f{i}.dat").read_bytes() == datas[i]
    assert sorted(p.name for p in root.rglob("*") if p.is_file()) == ["f0.dat", "f1.dat",
                                                                       "f2.dat"]


def test_an_entry_repeated_under_another_name_is_written_once(tmp_path):
    """Two entries that map to one datafile (its full ZipMapper name, then its bare name with
    other bytes) never share its part file: the first is placed, the second skipped."""
    first, other = os.urandom(70_000), os.urandom(70_000)
    data = zip_of([("ids/LILS/INV/1/ds/a.dat", first), ("a.dat", other)])
    root = tmp_path / "target"
    jobs, infos = plan([("a.dat", first)])
    (result,) = PreparedZipSource().transfer(context(root, FakeIds(data)), jobs, infos)
    assert isinstance(result, FileResult), result
    assert (root / "alice/dl/INV/1/ds/a.dat").read_bytes() == first
    assert not list(root.rglob("*.pollcat-part"))


@pytest.mark.timeout(60)
def test_a_target_failure_while_staging_ends_the_pass_without_waiting_for_the_reader(
        tmp_path, monkeypatch):
    """The staging thread fails on its first chunk of a 12 MiB entry (more chunks than its
    feed holds): the feed is drained, so the reading thread is never left waiting, the pass
    ends with the target's error and the entries before it stay placed."""
    import pollcat.sources as sources
    from pollcat.errors import TargetUnavailable

    datas = [os.urandom(100_000), os.urandom(12 << 20), os.urandom(100_000)]
    data = zip_of([(f"ids/LILS/INV/1/ds/f{i}.dat", d) for i, d in enumerate(datas)])
    real = sources.stage_stream_entry

    def failing(target, job, chunks, **kwargs):
        if job.name == "f1.dat":
            next(iter(chunks))
            raise TargetUnavailable("the target's disk went away", datafile=job.name)
        return real(target, job, chunks, **kwargs)

    monkeypatch.setattr(sources, "stage_stream_entry", failing)
    root = tmp_path / "target"
    jobs, infos = plan([(f"f{i}.dat", d) for i, d in enumerate(datas)])
    results = PreparedZipSource().transfer(context(root, FakeIds(data)), jobs, infos)
    assert type(results[0]).__name__ == "FileResult"
    assert type(results[1]).__name__ == "TargetUnavailable"
    assert (root / "alice/dl/INV/1/ds/f0.dat").read_bytes() == datas[0]
    assert not list(root.rglob("*.pollcat-part"))
