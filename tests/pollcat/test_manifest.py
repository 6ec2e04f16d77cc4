"""The delivery receipt: written last and atomically, read defensively, compared exactly."""

from __future__ import annotations

import errno
import json
import logging
import os
import uuid
import zlib
from dataclasses import replace

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from pollcat.errors import TargetError
from pollcat.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestFile,
    manifest_files,
    read_manifest,
    write_manifest,
)
from pollcat.targetfs import LocalTarget
from pollcat.targetfs import open_target as T
from pollcat.transfer import FileJob, write_file
from tests.support import BytesSource

pytestmark = pytest.mark.unit

Source = BytesSource


def job(i: int, data: bytes, rel: str, checksum: str | None = "auto") -> FileJob:
    crc = format(zlib.crc32(data), "x") if checksum == "auto" else checksum
    return FileJob(i, rel.rsplit("/", 1)[-1], rel, len(data), crc,
                   lambda off, d=data: Source(d, off))


@pytest.fixture(params=["local", "memory"])
def target(request, tmp_path):
    if request.param == "local":
        yield fsspec.filesystem("file"), str(tmp_path / "target")
        return
    fs, root = MemoryFileSystem(), f"/m-{uuid.uuid4().hex}"
    yield fs, root
    if fs.exists(root):
        fs.rm(root, recursive=True)


DATAS = [b"first file", os.urandom(5000), b""]
BASE = "alice/my-download"


def jobs() -> list[FileJob]:
    return [job(1, DATAS[0], f"{BASE}/INV/1/ds/a.txt"),
            job(2, DATAS[1], f"{BASE}/INV/1/ds/sub/b.bin"),
            job(3, DATAS[2], f"{BASE}/INV/1/ds/empty", checksum=None)]


def deliver(fs, root) -> Manifest:
    js = jobs()
    results = [write_file(T(fs, root), j, staging=f"{BASE}/.pollcat") for j in js]
    return write_manifest(T(fs, root), BASE, facility="LILS", download_id=42,
                          file_name="my-download", user="alice", transport="sftp",
                          files=manifest_files(js, BASE, results))


def test_write_and_read_back(target):
    fs, root = target
    written = deliver(fs, root)
    path = f"{root}/{BASE}/{MANIFEST_NAME}"
    data = json.loads(fs.cat(path))
    assert data["facility"] == "LILS" and data["download_id"] == 42
    assert data["file_name"] == "my-download" and data["user"] == "alice"
    assert data["transport"] == "sftp" and data["completed_at"].endswith("Z")
    assert data["totals"] == {"files": 3, "bytes": len(DATAS[0]) + len(DATAS[1])}
    assert data["files"][0] == {"path": "INV/1/ds/a.txt", "size": len(DATAS[0]),
                                "crc32": format(zlib.crc32(DATAS[0]), "x"), "datafile_id": 1,
                                "verified_by": "icat-crc32"}
    # no checksum in ICAT: the computed one is recorded
    assert data["files"][2]["crc32"] == format(zlib.crc32(b""), "x")
    assert read_manifest(T(fs, root), BASE) == written
    assert not [p for p in fs.find(root) if "pollcat-part" in p]


def test_covers(target):
    fs, root = target
    manifest = deliver(fs, root)
    js = jobs()
    assert manifest.covers(js)
    assert manifest.covers(js[:2])
    extra = job(4, b"new", f"{BASE}/INV/1/ds/new.txt")
    assert not manifest.covers([*js, extra])
    assert not manifest.covers([replace(js[0], size=99)])
    assert not manifest.covers([replace(js[0], checksum="1")])
    assert not manifest.covers([replace(js[0], rel_path=f"{BASE}/elsewhere.txt")])
    # ICAT's unpadded hex and a zero-padded one are the same CRC
    assert manifest.covers([replace(js[1], checksum=js[1].checksum.zfill(8))])


def test_absent_and_corrupt_manifests_are_none(target, caplog):
    fs, root = target
    assert read_manifest(T(fs, root), BASE) is None
    fs.makedirs(f"{root}/{BASE}", exist_ok=True)
    for junk in (b"{not json", b"[]", b'{"facility": "LILS"}', b"\xff\xfe",
                 json.dumps({"facility": "x", "download_id": "NaN?", "file_name": "f",
                             "user": "u", "transport": "t", "completed_at": "c",
                             "files": []}).encode()):
        fs.pipe(f"{root}/{BASE}/{MANIFEST_NAME}", junk)
        with caplog.at_level(logging.WARNING, logger="pollcat.manifest"):
            assert read_manifest(T(fs, root), BASE) is None
    assert "unreadable manifest" in caplog.text


def test_rewrite_replaces(target):
    fs, root = target
    deliver(fs, root)
    second = write_manifest(T(fs, root), BASE, facility="LILS", download_id=42,
                            file_name="my-download", user="alice", transport="sftp",
                            files=[ManifestFile("x", 1, "1", 9)])
    assert read_manifest(T(fs, root), BASE) == second
    assert [p for p in fs.find(root) if MANIFEST_NAME in p and "pollcat-part" not in p] == [
        f"{root}/{BASE}/{MANIFEST_NAME}".replace("//", "/")]


def test_refusing_target(tmp_path):
    class ReadOnly(LocalTarget):
        def create(self, rel):
            raise PermissionError(errno.EACCES, "Permission denied", rel)

    with pytest.raises(TargetError):
        write_manifest(ReadOnly(str(tmp_path)), "dl", facility="F",
                       download_id=1, file_name="f", user="u", transport="t", files=[])
    assert not (tmp_path / "dl" / MANIFEST_NAME).exists()
    assert not list(tmp_path.rglob("*.pollcat-part"))


def test_manifest_files_refuses_paths_outside_base():
    with pytest.raises(ValueError):
        manifest_files([job(1, b"x", "bob/other/x")], BASE)
