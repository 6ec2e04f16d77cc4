"""Things planted where pollcat writes: symlinks, FIFOs, devices, directories and files at every
name pollcat creates (final file, part file, staging directory, manifest, manifest temp, claim,
each directory level), on a local target and over SFTP.

Every case asserts a clear UnsafeTargetPath naming the path, that the outside directory (with a
marker file) is byte-for-byte and mode-for-mode unchanged and holds no new file, and that no
datafile bytes landed anywhere (nothing is followed, nothing is removed).
"""

from __future__ import annotations

import os
import stat
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import fsspec
import pytest

from pollcat.claim import ClaimResult, acquire
from pollcat.errors import UnsafeTargetPath
from pollcat.manifest import read_manifest, write_manifest
from pollcat.targetfs import TargetFS, open_target
from pollcat.transfer import FileJob, write_file

# every case against both ways of resolving a path below the root (openat2, the walk)
# (each test is marked `unit` but the sftp one, which starts sshd)
pytestmark = pytest.mark.usefixtures("path_resolution")

DATA = b"POLLCAT-PAYLOAD " * 4096
DL = "alice/dl"
REL = f"{DL}/INV/1/ds/f.dat"
STAGING = f"{DL}/.pollcat"
PART = f"{STAGING}/7.pollcat-part"
MANIFEST = f"{DL}/pollcat-manifest.json"
MANIFEST_TEMP = f"{STAGING}/pollcat-manifest.json.pollcat-part"
CLAIM = f"{STAGING}/.pollcat-claim.0"
MARKER = b"outside marker: must never change\n"


class Source:
    def __init__(self, offset: int):
        self.pos = offset

    def read(self, n: int) -> bytes:
        out = DATA[self.pos:self.pos + n]
        self.pos += len(out)
        return out

    def close(self) -> None:
        pass


def job() -> FileJob:
    return FileJob(7, "f.dat", REL, len(DATA), format(zlib.crc32(DATA), "x"), Source)


@pytest.fixture
def outside(tmp_path) -> Iterator[Path]:
    """A directory outside the root with a marker file; checked unchanged after the test."""
    out = tmp_path / "outside"
    out.mkdir()
    marker = out / "marker"
    marker.write_bytes(MARKER)
    marker.chmod(0o640)
    before = snapshot(out)
    yield out
    assert snapshot(out) == before, "something outside the root changed"
    assert marker.read_bytes() == MARKER and stat.S_IMODE(marker.stat().st_mode) == 0o640


def snapshot(d: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.lstat().st_mode, p.read_bytes() if p.is_file() else b"")
            for p in d.iterdir()}


def no_payload_anywhere(base: Path) -> None:
    """No file anywhere under `base` holds the datafile's bytes (nothing was written)."""
    for p in base.rglob("*"):
        if p.is_file() and not p.is_symlink():
            assert not p.read_bytes().startswith(DATA[:32]), p


# --- what gets planted ----------------------------------------------------------------------


def plant_symlink_dir(at: Path, outside: Path) -> None:
    at.symlink_to(outside, target_is_directory=True)


def plant_symlink_file(at: Path, outside: Path) -> None:
    at.symlink_to(outside / "marker")


def plant_dangling_symlink(at: Path, outside: Path) -> None:
    at.symlink_to(outside / "created-through-the-link")


def plant_fifo(at: Path, outside: Path) -> None:
    os.mkfifo(at)


def plant_device(at: Path, outside: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    os.mknod(at, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null


def plant_directory(at: Path, outside: Path) -> None:
    at.mkdir()
    (at / "users-file").write_bytes(b"mine")


def plant_file(at: Path, outside: Path) -> None:
    at.write_bytes(b"a user's file")


FILE_PLANTS = [plant_symlink_file, plant_dangling_symlink, plant_fifo, plant_device,
               plant_directory]
DIR_PLANTS = [plant_symlink_dir, plant_dangling_symlink, plant_fifo, plant_file]
Plant = Callable[[Path, Path], None]


def ids(plants: list[Plant]) -> list[str]:
    return [p.__name__.removeprefix("plant_") for p in plants]


def make_parents(root: Path, rel: str, *, staging: bool) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    if staging:
        (root / STAGING).mkdir(mode=0o700, exist_ok=True)


def assert_unsafe(info: pytest.ExceptionInfo, root: Path, rel: str) -> None:
    message = str(info.value)
    assert str(root / rel) in message, message
    assert "refusing" in message and "pollcat" in message, message


# --- local target: every name, every kind ---------------------------------------------------


@pytest.mark.parametrize("plant", FILE_PLANTS, ids=ids(FILE_PLANTS))
@pytest.mark.parametrize("rel", [REL, PART], ids=["final", "part"])
@pytest.mark.unit
def test_planted_at_a_file_name(tmp_path, outside, plant, rel):
    root = tmp_path / "target"
    make_parents(root, rel, staging=True)
    plant(root / rel, outside)
    with pytest.raises(UnsafeTargetPath) as info:
        write_file(open_target(fsspec.filesystem("file"), str(root)), job(), staging=STAGING)
    assert_unsafe(info, root, rel)
    assert os.path.lexists(root / rel)  # left alone, not removed
    no_payload_anywhere(tmp_path)


@pytest.mark.parametrize("plant", DIR_PLANTS, ids=ids(DIR_PLANTS))
@pytest.mark.parametrize("level", ["alice", DL, f"{DL}/INV", f"{DL}/INV/1", f"{DL}/INV/1/ds"])
@pytest.mark.unit
def test_planted_at_a_directory_level(tmp_path, outside, plant, level):
    root = tmp_path / "target"
    (root / level).parent.mkdir(parents=True, exist_ok=True)
    plant(root / level, outside)
    with pytest.raises(UnsafeTargetPath) as info:
        write_file(open_target(fsspec.filesystem("file"), str(root)), job(), staging=STAGING)
    assert_unsafe(info, root, level)
    no_payload_anywhere(tmp_path)


STAGING_PLANTS = [plant_symlink_dir, plant_fifo, plant_file]


@pytest.mark.parametrize("plant", STAGING_PLANTS, ids=ids(STAGING_PLANTS))
@pytest.mark.unit
def test_planted_at_the_staging_directory(tmp_path, outside, plant):
    root = tmp_path / "target"
    (root / DL).mkdir(parents=True)
    plant(root / STAGING, outside)
    with pytest.raises(UnsafeTargetPath) as info:
        write_file(open_target(fsspec.filesystem("file"), str(root)), job(), staging=STAGING)
    assert_unsafe(info, root, STAGING)
    no_payload_anywhere(tmp_path)


@pytest.mark.parametrize(("owner", "mode"), [(65534, 0o700), (None, 0o777), (None, 0o755)],
                         ids=["other-owner", "world-writable", "group-readable-0755"])
@pytest.mark.unit
def test_staging_directory_not_made_by_pollcat(tmp_path, outside, owner, mode):
    if owner is not None and os.geteuid() != 0:
        pytest.skip("chown needs root")
    root = tmp_path / "target"
    (root / STAGING).mkdir(parents=True)
    (root / STAGING).chmod(mode)
    if owner is not None:
        os.chown(root / STAGING, owner, owner)
    tfs = open_target(fsspec.filesystem("file"), str(root))
    if mode == 0o755 and owner is None:  # ours, readable: fine (only write bits matter)
        write_file(tfs, job(), staging=STAGING)
        assert (root / REL).read_bytes() == DATA
        return
    with pytest.raises(UnsafeTargetPath) as info:
        write_file(tfs, job(), staging=STAGING)
    assert_unsafe(info, root, STAGING)
    no_payload_anywhere(tmp_path)


MANIFEST_PLANTS = [plant_symlink_file, plant_dangling_symlink, plant_fifo, plant_directory]


def _write_manifest(tfs: TargetFS) -> None:
    write_manifest(tfs, DL, facility="LILS", download_id=1, file_name="dl", user="alice",
                   transport="globus", files=[])


@pytest.mark.parametrize("plant", MANIFEST_PLANTS, ids=ids(MANIFEST_PLANTS))
@pytest.mark.parametrize("rel", [MANIFEST, MANIFEST_TEMP], ids=["manifest", "manifest-temp"])
@pytest.mark.unit
def test_planted_at_the_manifest(tmp_path, outside, plant, rel):
    root = tmp_path / "target"
    make_parents(root, rel, staging=True)
    plant(root / rel, outside)
    tfs = open_target(fsspec.filesystem("file"), str(root))
    with pytest.raises(UnsafeTargetPath) as info:
        _write_manifest(tfs)
    assert_unsafe(info, root, rel)
    if rel == MANIFEST:  # reading it does not follow or block either
        with pytest.raises(UnsafeTargetPath):
            read_manifest(tfs, DL)
    assert os.path.lexists(root / rel)


CLAIM_PLANTS = [plant_symlink_file, plant_dangling_symlink, plant_fifo, plant_directory]


@pytest.mark.parametrize("plant", CLAIM_PLANTS, ids=ids(CLAIM_PLANTS))
@pytest.mark.parametrize("rel", [CLAIM, f"{DL}/.pollcat-claim"], ids=["claim", "legacy-claim"])
@pytest.mark.unit
def test_planted_at_the_claim(tmp_path, outside, plant, rel):
    root = tmp_path / "target"
    make_parents(root, rel, staging=True)
    plant(root / rel, outside)
    tfs = open_target(fsspec.filesystem("file"), str(root))
    with pytest.raises(UnsafeTargetPath) as info:
        acquire(tfs, DL, facility="LILS", download_id=1)
    assert_unsafe(info, root, rel)


@pytest.mark.unit
def test_symlinked_download_dir_is_refused_by_the_claim(tmp_path, outside):
    root = tmp_path / "target"
    (root / "alice").mkdir(parents=True)
    (root / DL).symlink_to(outside, target_is_directory=True)
    tfs = open_target(fsspec.filesystem("file"), str(root))
    with pytest.raises(UnsafeTargetPath) as info:
        acquire(tfs, DL, facility="LILS", download_id=1)
    assert_unsafe(info, root, DL)


@pytest.mark.unit
def test_a_clean_target_still_works(tmp_path, outside):
    """The control case: nothing planted, everything in place, staging dir is 0700."""
    root = tmp_path / "target"
    tfs = open_target(fsspec.filesystem("file"), str(root))
    assert acquire(tfs, DL, facility="LILS", download_id=1).result is ClaimResult.ACQUIRED
    write_file(tfs, job(), staging=STAGING)
    _write_manifest(tfs)
    assert (root / REL).read_bytes() == DATA
    assert stat.S_IMODE((root / STAGING).stat().st_mode) == 0o700
    assert not list(root.rglob("*.pollcat-part"))
    assert read_manifest(tfs, DL).download_id == 1


# --- SFTP: lstat before each step -----------------------------------------------------------


@pytest.fixture(scope="module")
def sftp_server():
    pytest.importorskip("sshfs")
    from tests.sshd import running_sshd

    with running_sshd() as server:
        yield server


SFTP_CASES = [
    ("final", REL, plant_symlink_file),
    ("final", REL, plant_directory),
    ("part", PART, plant_dangling_symlink),
    ("staging", STAGING, plant_symlink_dir),
    ("download-dir", DL, plant_symlink_dir),
    ("dataset-dir", f"{DL}/INV/1/ds", plant_symlink_dir),
    ("dataset-dir", f"{DL}/INV/1/ds", plant_file),
]


@pytest.mark.sshd
@pytest.mark.parametrize(("where", "rel", "plant"), SFTP_CASES,
                         ids=[f"{w}-{p.__name__.removeprefix('plant_')}"
                              for w, _, p in SFTP_CASES])
def test_planted_over_sftp(tmp_path, outside, sftp_server, where, rel, plant):
    root = tmp_path / "target"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    if where == "part":
        (root / STAGING).mkdir(mode=0o700, exist_ok=True)
    plant(root / rel, outside)
    fs, path = fsspec.core.url_to_fs(sftp_server.url(root), **sftp_server.storage_options())
    tfs = open_target(fs, path)
    with pytest.raises(UnsafeTargetPath) as info:
        write_file(tfs, job(), staging=STAGING)
    assert str(root / rel) in str(info.value)
    no_payload_anywhere(tmp_path)


@pytest.mark.unit
def test_staging_directory_swapped_between_steps_is_refused(tmp_path, outside):
    """A user owning the download directory renames pollcat's staging directory away and puts
    their own (with a fake part file) in its place, after the bytes were written: the placement
    walks the staging directory again, finds it is not pollcat's, and places nothing."""
    root = tmp_path / "target"
    tfs = open_target(fsspec.filesystem("file"), str(root))

    class Swapper:
        def __init__(self):
            self.pos = 0

        def read(self, n):
            out = DATA[self.pos:self.pos + n]
            self.pos += len(out)
            if not out:  # the stream ended: swap now, before verify and placement
                os.rename(root / STAGING, root / DL / "stolen")
                (root / STAGING).mkdir(mode=0o700)
                os.chown(root / STAGING, 65534, 65534)
                (root / PART).write_bytes(b"user's bytes")
            return out

        def close(self):
            pass

    j = job()
    j.open = lambda offset: Swapper()
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    with pytest.raises(UnsafeTargetPath) as info:
        write_file(tfs, j, staging=STAGING)
    assert_unsafe(info, root, STAGING)
    assert not (root / REL).exists()
