"""The verifying pass (`pollcat verify`): re-read a COMPLETE download's manifest-listed files and
report what is missing or no longer matches, without changing anything."""

from __future__ import annotations

import os
import stat
import zlib

import fsspec
import pytest

from pollcat.config import TargetConfig
from pollcat.delivery import verify_download
from pollcat.manifest import MANIFEST_NAME, ManifestFile, verify_delivery, write_manifest
from pollcat.targetfs import open_target
from tests.conftest import scenario
from tests.support import downloads, pipeline_for, sweep_until_complete

DL = "alice/dl"
FILES = {"INV/1/ds/a.bin": os.urandom(70_000), "INV/1/ds/sub/b.txt": b"hello",
         "INV/1/ds/empty": b""}


def _deliver(root) -> None:
    entries = []
    for i, (rel, data) in enumerate(FILES.items()):
        path = root / DL / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        entries.append(ManifestFile(rel, len(data), format(zlib.crc32(data), "x"), i + 1))
    write_manifest(open_target(fsspec.filesystem("file"), str(root)), DL, facility="LILS",
                   download_id=5, file_name="dl", user="alice", transport="globus",
                   files=entries)


@pytest.fixture
def delivered(tmp_path):
    root = tmp_path / "target"
    _deliver(root)
    return root, open_target(fsspec.filesystem("file"), str(root))


def test_intact_delivery_is_ok(delivered):
    _root, tfs = delivered
    check = verify_delivery(tfs, DL)
    assert check.ok and check.checked == 3 and check.problems == []
    assert "all 3 files match" in check.summary()


def test_missing_and_changed_files_are_reported(delivered):
    root, tfs = delivered
    (root / DL / "INV/1/ds/sub/b.txt").unlink()
    with open(root / DL / "INV/1/ds/a.bin", "r+b") as f:  # same size, other bytes
        f.write(b"\0" * 16)
    (root / DL / "INV/1/ds/empty").write_bytes(b"grown")
    check = verify_delivery(tfs, DL)
    assert not check.ok and check.checked == 3
    assert [p.path for p in check.missing] == ["INV/1/ds/sub/b.txt"]
    problems = {p.path: p.problem for p in check.mismatched}
    assert problems["INV/1/ds/a.bin"].startswith("CRC32 ")
    assert problems["INV/1/ds/empty"] == "size 5, manifest says 0"
    assert "1 missing, 2 not matching of 3 files" in check.summary()


def test_a_planted_symlink_is_reported_not_followed(delivered, tmp_path):
    root, tfs = delivered
    secret = tmp_path / "secret"
    secret.write_bytes(FILES["INV/1/ds/sub/b.txt"])  # same bytes: following it would "match"
    secret.chmod(0o600)
    (root / DL / "INV/1/ds/sub/b.txt").unlink()
    (root / DL / "INV/1/ds/sub/b.txt").symlink_to(secret)
    check = verify_delivery(tfs, DL)
    (problem,) = check.problems
    assert problem.path == "INV/1/ds/sub/b.txt" and "symbolic link" in problem.problem
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_no_manifest_is_not_ok(tmp_path):
    tfs = open_target(fsspec.filesystem("file"), str(tmp_path))
    check = verify_delivery(tfs, DL)
    assert check.manifest is None and not check.ok
    assert "no readable manifest" in check.summary()


def test_unsafe_manifest_entries_are_reported_not_opened(delivered):
    root, tfs = delivered
    text = (root / DL / MANIFEST_NAME).read_text()
    (root / DL / MANIFEST_NAME).write_text(text.replace('"INV/1/ds/empty"', '"../../x"'))
    check = verify_delivery(tfs, DL)
    (problem,) = check.problems
    assert problem.path == "../../x" and problem.problem.startswith("unsafe path")


def test_verify_a_download_delivered_through_the_simulator(make_sim, tmp_path):
    sim = make_sim(scenario(downloads=[{
        "user": "simple/alice", "transport": "globus", "file_name": "run42",
        "email": "alice@example.org", "items": [{"investigation": "INV-001",
                                                 "dataset": "run-42"}]}]))
    pipe = pipeline_for(sim, tmp_path)
    sweep_until_complete(pipe, sim.url)
    target = TargetConfig(url=f"file://{tmp_path / 'target/globus'}")
    assert verify_download(target, "alice/run42").ok
    (tmp_path / "target/globus/alice/run42/INV-001/1/run-42/scan_0001.nxs").unlink()
    check = verify_download(target, "alice/run42")
    assert [p.path for p in check.missing] == ["INV-001/1/run-42/scan_0001.nxs"]
    assert list(downloads(sim.url).values())[0]["status"] == "COMPLETE"  # only reported
