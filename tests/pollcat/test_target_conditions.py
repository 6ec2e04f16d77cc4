"""Conditions of the target and of the data that are not verdicts on a download: a full tmpfs,
a read-only bind mount, and the IDS answering 503 "data not online" to getData.

A full or read-only target raises TargetUnavailable (transient), the attempt's part files are
removed and the download is not expired; a 503 is asked once per file and then waits, instead of
the old tight reopen loop (12 getData calls in 0.6 s).
"""

from __future__ import annotations

import os
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from pollcat.errors import NotReady, TargetUnavailable, TransientError
from pollcat.state import StateStore
from pollcat.targetfs import open_target
from pollcat.transfer import FileJob, Reopen, write_file
from tests.conftest import scenario
from tests.support import (
    BytesSource,
    delivered_files,
    pipeline_for,
    statuses,
    sweep_until_complete,
    wait_status,
)

ALICE_RUN42 = {"user": "simple/alice", "transport": "globus", "file_name": "alice_run42",
               "email": "alice@example.org",
               "items": [{"investigation": "INV-001", "dataset": "run-42"}]}
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")


def _run(*argv: str) -> None:
    subprocess.run(list(argv), check=True, capture_output=True, timeout=30)


@pytest.fixture
def small_tmpfs(tmp_path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a 3 MiB datafile fills it up."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    _run("mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mnt))
    try:
        yield mnt
    finally:
        _run("umount", "-l", str(mnt))


@pytest.fixture
def read_only(tmp_path) -> Iterator[Path]:
    """A read-only bind mount of a directory that already holds a download's directories."""
    src, mnt = tmp_path / "rw", tmp_path / "ro"
    (src / "alice/dl/INV/1/ds").mkdir(parents=True)
    mnt.mkdir()
    _run("mount", "--bind", str(src), str(mnt))
    try:
        _run("mount", "-o", "remount,bind,ro", str(mnt))
        yield mnt
    finally:
        _run("umount", "-l", str(mnt))


Source = BytesSource


def job(data: bytes, rel: str = "alice/dl/INV/1/ds/big.dat", i: int = 7) -> FileJob:
    return FileJob(i, rel.rsplit("/", 1)[-1], rel, len(data), format(zlib.crc32(data), "x"),
                   lambda off: Source(data, off))


@needs_root
def test_full_target_is_unavailable_and_leaves_no_part(small_tmpfs):
    tfs = open_target(fsspec.filesystem("file"), str(small_tmpfs))
    small = os.urandom(100_000)
    write_file(tfs, job(small, "alice/dl/INV/1/ds/small.dat", 1), staging="alice/dl/.pollcat")
    with pytest.raises(TargetUnavailable) as info:
        write_file(tfs, job(os.urandom(3 << 20)), staging="alice/dl/.pollcat")
    assert isinstance(info.value, TransientError)
    assert "big.dat" in str(info.value) and "No space left" in str(info.value)
    assert not list(small_tmpfs.rglob("*.pollcat-part"))  # the space is given back
    assert not (small_tmpfs / "alice/dl/INV/1/ds/big.dat").exists()
    assert (small_tmpfs / "alice/dl/INV/1/ds/small.dat").read_bytes() == small


@needs_root
def test_read_only_target_is_unavailable(read_only):
    tfs = open_target(fsspec.filesystem("file"), str(read_only))
    with pytest.raises(TargetUnavailable) as info:
        write_file(tfs, job(b"x" * 1000), staging="alice/dl/.pollcat")
    assert "Read-only file system" in str(info.value)
    assert sorted(str(p.relative_to(read_only)) for p in read_only.rglob("*")) == [
        "alice", "alice/dl", "alice/dl/INV", "alice/dl/INV/1", "alice/dl/INV/1/ds"]


@needs_root
def test_full_target_holds_the_download_instead_of_expiring_it(make_sim, small_tmpfs,
                                                                 tmp_path):
    scn = scenario(downloads=[ALICE_RUN42])
    scn["investigations"][0]["datasets"][0]["datafiles"].append(
        {"name": "huge.raw", "size": 3 << 20})
    sim = make_sim(scn)
    wait_status(sim.url, "RESTORING")
    pipe = pipeline_for(sim, tmp_path, target_url=f"file://{small_tmpfs}")
    outcomes = []
    for _ in range(5):
        outcomes = pipe.sweep()
        if outcomes and outcomes[0].outcome != "waiting":
            break
    (download_id,) = statuses(sim.url)
    assert [o.outcome for o in outcomes] == ["held"], outcomes  # a target condition
    assert "No space left" in outcomes[0].reason  # whichever file hit the limit first
    assert statuses(sim.url) == {download_id: "RESTORING"}  # not EXPIRED
    assert StateStore(tmp_path / "state", "LILS").get(download_id).verdict != "expired"
    assert not list(small_tmpfs.rglob("*.pollcat-part"))
    assert not (small_tmpfs / "globus/alice/alice_run42/pollcat-manifest.json").exists()


# --- 503 "data not online" is an answer, not a broken connection ----------------------------


class NotOnlineAfter:
    """A source that sends `first` bytes, breaks, then answers 503 to every reopening."""

    def __init__(self, data: bytes, first: int | None):
        self.data, self.first, self.opens = data, first, []

    def __call__(self, offset: int):
        self.opens.append(offset)
        if self.first is None or len(self.opens) > 1:
            raise NotReady("Data not online", service="IDS", status=503,
                           code="DataNotOnlineException")
        src = Source(self.data[:self.first], offset)
        return src


@pytest.mark.parametrize("first", [None, 300_000], ids=["at-first-open", "after-a-break"])
def test_503_is_raised_at_once_and_keeps_the_part(tmp_path, monkeypatch, first):
    slept: list[float] = []
    monkeypatch.setattr("pollcat.transfer._sleep", slept.append)
    data = os.urandom(1 << 20)
    server = NotOnlineAfter(data, first)
    j = job(data)
    j.open = server
    tfs = open_target(fsspec.filesystem("file"), str(tmp_path))
    with pytest.raises(NotReady):
        write_file(tfs, j, staging="alice/dl/.pollcat", reopen=Reopen(max_resumes=5))
    if first is None:
        assert server.opens == [0] and slept == []
    else:  # the cut after 300 kB is a lost connection (one reopen, after a pause); the 503 not
        assert server.opens == [0, 300_000] and slept == [0.5]
        part = tmp_path / "alice/dl/.pollcat/7.pollcat-part"
        assert part.read_bytes() == data[:300_000]  # kept for the next sweep


def test_503_from_the_simulated_ids_costs_one_get_data_per_file(make_sim, tmp_path):
    sim = make_sim(scenario(downloads=[ALICE_RUN42]))
    wait_status(sim.url, "RESTORING")
    sim.add_fault(kind="error", service="ids", endpoint="getData", status=503,
                  code="DataNotOnlineException", message="Data not online", count=2)
    pipe = pipeline_for(sim, tmp_path)
    first = []
    for _ in range(5):
        first = pipe.sweep()
        if first and first[0].outcome != "waiting" or sim.facility.faults.log:
            break
    injected = [e for e in sim.facility.faults.log if e.get("kind") == "error"]
    assert len(injected) == 2  # one getData per file, no reopen loop
    assert [o.outcome for o in first] == ["waiting"], first
    sweep_until_complete(pipe, sim.url)
    assert len(delivered_files(tmp_path / "target/globus")) == 2
    assert not list((tmp_path / "target").rglob("*.pollcat-part"))


def test_503_on_the_prepared_zip_is_asked_once(tmp_path):
    """The zip source used to restart a 503 answer three times in a row, at once."""
    from pollcat.catalog import DatafileInfo
    from pollcat.sources import PreparedZipSource, TransferContext

    class NotOnline:
        calls = 0

        def get_prepared(self, prepared_id, offset=0):
            NotOnline.calls += 1
            raise NotReady("Data not online", service="IDS", status=503)

    data = b"abc"
    j = job(data)
    info = DatafileInfo(id=7, name="big.dat", size=3, checksum=j.checksum, location=None,
                        dataset_id=1, dataset="ds", investigation_id=2, investigation="INV",
                        visit="1", facility="LILS")
    ctx = TransferContext(download_id=1, prepared_id="p", ids=NotOnline(),
                          session_id=lambda: "s",
                          target=open_target(fsspec.filesystem("file"), str(tmp_path)),
                          staging="alice/dl/.pollcat", concurrency=1)
    (result,) = PreparedZipSource().transfer(ctx, [j], {7: info})
    assert isinstance(result, NotReady) and NotOnline.calls == 1
