"""The target layer's own contract, on a local root (descriptors) and a memory filesystem
(lstat before each step): exclusive create, atomic replace, removal of links themselves, and
directories made by racing threads."""

from __future__ import annotations

import os
import threading
import uuid

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from pollcat.errors import UnsafeTargetPath
from pollcat.targetfs import FsspecTarget, Kind, LocalTarget, NameTaken, open_target

# every case against both ways of resolving a path below the root (openat2, the walk)
pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("path_resolution")]


@pytest.fixture(params=["local", "memory"])
def tfs(request, tmp_path):
    if request.param == "local":
        return open_target(fsspec.filesystem("file"), str(tmp_path / "root"))
    return open_target(MemoryFileSystem(), f"/m-{uuid.uuid4().hex}")


def test_open_target_picks_the_layer(tmp_path):
    assert isinstance(open_target(fsspec.filesystem("file"), str(tmp_path)), LocalTarget)
    assert isinstance(open_target(MemoryFileSystem(), "/x"), FsspecTarget)


def test_create_is_exclusive_and_replace_is_atomic(tfs):
    tfs.make_dirs("a/b")
    with tfs.create("a/b/new") as f:
        f.write(b"one")
    with pytest.raises(NameTaken):
        tfs.create("a/b/new")
    with tfs.create("a/b/other") as f:
        f.write(b"two")
    tfs.replace("a/b/other", "a/b/new")
    with tfs.open_read("a/b/new") as f:
        assert f.read() == b"two"
    assert tfs.lstat("a/b/other") is None
    assert tfs.lstat("a/b/new").kind is Kind.FILE and tfs.lstat("a/b/new").size == 3
    assert sorted(tfs.list_names("a/b")) == ["new"]


def test_reads_of_absent_things_are_none(tfs):
    assert tfs.open_read("no/such/file") is None
    assert tfs.open_append("no/such/file") is None
    assert tfs.lstat("no/such") is None
    assert tfs.list_names("no/such") == []
    tfs.remove("no/such/file")  # nothing to do, no error


def test_lstat_all_answers_like_lstat_for_each_name(tfs):
    """The claim check's batch form (one walk to the directory): the same answers as one
    `lstat` each, None for every name when the directory is missing, and a name that is not
    one component refused."""
    from pollcat.errors import UnsafePathError

    tfs.make_dirs("d/.pollcat")
    with tfs.create("d/.pollcat/c.3") as f:
        f.write(b"claim")
    tfs.make_dirs("d/.pollcat/sub")
    names = ["c.3", "c.4", "sub"]
    got = tfs.lstat_all("d/.pollcat", names)
    assert [(e.kind, e.size) if e else None for e in got] == [
        (e.kind, e.size) if e else None for e in (tfs.lstat(f"d/.pollcat/{n}") for n in names)]
    assert got[0].kind is Kind.FILE and got[0].size == 5 and got[1] is None
    assert got[2].kind is Kind.DIR
    assert tfs.lstat_all("no/such", names) == [None, None, None]
    for bad in ("../c.3", "sub/x", "", ".."):
        with pytest.raises(UnsafePathError):
            tfs.lstat_all("d/.pollcat", [bad])


def test_lstat_all_refuses_a_linked_directory(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "c.3").write_bytes(b"not ours")
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    os.symlink(outside, root / "d" / "link")
    tfs = open_target(fsspec.filesystem("file"), str(root))
    with pytest.raises(UnsafeTargetPath):
        tfs.lstat_all("d/link", ["c.3"])


def test_racing_threads_make_the_same_directories(tfs):
    errors = []
    barrier = threading.Barrier(8)

    def make():
        barrier.wait()
        try:
            tfs.make_dirs("x/y/z")
            tfs.make_private_dir("x/.pollcat")
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert tfs.lstat("x/y/z").kind is Kind.DIR


def test_local_create_refuses_a_dangling_link_and_remove_unlinks_only_the_link(tmp_path):
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    target = tmp_path / "elsewhere"
    (root / "d/link").symlink_to(target)
    tfs = LocalTarget(str(root))
    with pytest.raises(NameTaken):
        tfs.create("d/link")  # O_EXCL: never created through the link
    assert not target.exists()
    with pytest.raises(UnsafeTargetPath):
        tfs.create_replacing("d/link")  # not ours to replace
    target.write_bytes(b"keep")
    tfs.remove("d/link")
    assert not os.path.lexists(root / "d/link") and target.read_bytes() == b"keep"


def test_local_paths_longer_than_path_max_work(tmp_path):
    """Walking by descriptors has no PATH_MAX: a 4 KB path of legal components is fine."""
    tfs = LocalTarget(str(tmp_path / "root"))
    deep = "/".join(["d" * 250] * 20)
    tfs.make_dirs(deep)
    with tfs.create(f"{deep}/f") as f:
        f.write(b"deep")
    with tfs.open_read(f"{deep}/f") as f:
        assert f.read() == b"deep"


def test_openat2_resolves_a_deep_path_in_one_call_and_refuses_a_planted_link(
        tmp_path, monkeypatch, path_resolution):
    """Where the kernel has openat2, one call per operation replaces the lstat of every
    component; a link planted anywhere on the way still ends in the walk's precise refusal."""
    from pollcat.errors import UnsafeTargetPath
    from pollcat.targetfs import beneath

    calls: list[str] = []
    real = beneath.openat2
    monkeypatch.setattr(beneath, "openat2", lambda fd, p, *a: calls.append(p) or real(fd, p, *a))
    tfs = LocalTarget(str(tmp_path / "root"))
    tfs.make_dirs("alice/run/INV-1/1/ds")
    with tfs.create("alice/run/INV-1/1/ds/f") as f:
        f.write(b"x")
    calls.clear()
    with tfs.open_read("alice/run/INV-1/1/ds/f") as f:
        assert f.read() == b"x"
    assert calls == (["alice/run/INV-1/1/ds"] if path_resolution == "openat2" else [])

    outside = tmp_path / "outside"
    outside.mkdir()
    os.rename(tmp_path / "root/alice/run/INV-1", tmp_path / "moved")
    os.symlink(outside, tmp_path / "root/alice/run/INV-1")
    with pytest.raises(UnsafeTargetPath, match="INV-1"):
        tfs.create("alice/run/INV-1/1/ds/g")
    assert list(outside.iterdir()) == []
