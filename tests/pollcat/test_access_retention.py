"""Retention: `cleanup` removes only what pollcat delivered, revokes its grants, dry-runs."""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pollcat.access import AccessContext, AccessPolicy, PosixAccessHook
from pollcat.access.retention import CleanupOutcome, cleanup, cleanup_command
from pollcat.manifest import MANIFEST_NAME, Manifest, ManifestFile
from tests.pollcat.test_access_fixtures import (
    account_db,  # noqa: F401  (fixture)
    can_read,
    getfacl,
    snapshot,
    target_root,  # noqa: F401  (fixture)
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="access tests run as root")

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
OLD = (NOW - timedelta(days=20)).strftime("%Y-%m-%dT%H:%M:%SZ")
RECENT = (NOW - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")


def deliver(root: Path, download_id: int, dl: str, names: tuple[str, ...]) -> list[str]:
    """Write the files and a matching manifest; returns the files' root-relative paths."""
    files = []
    for name in names:
        path = root / dl / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode() * 10)
        files.append(f"{dl}/{name}")
    manifest = Manifest(facility="LILS", download_id=download_id, file_name=dl.rsplit("/")[-1],
                        user="simple/pcalice", transport="globus", completed_at=OLD, dir=dl,
                        files=[ManifestFile(n, len(n.encode()) * 10, None, i)
                               for i, n in enumerate(names)])
    (root / dl / MANIFEST_NAME).write_text(json.dumps(manifest.to_json()))
    return files


@pytest.fixture
def setup(account_db, target_root):  # noqa: F811
    alice = account_db.add_user("pcalice")
    policy = AccessPolicy(account_db_root=str(account_db.root), retention_days=15)
    hook = PosixAccessHook(policy)
    ledger = []
    for did, dl, when in ((1, "pcalice/old", OLD), (2, "pcalice/new", RECENT)):
        files = deliver(target_root, did, dl, ("INV/ds/a.dat", "INV/ds/sub/b.dat", "c.dat"))
        ctx = AccessContext(did, "simple/pcalice", "pcalice", str(target_root), dl, files)
        grants: list[dict] = []
        hook.apply(ctx, hook.plan(ctx), grants.append)
        ledger.append({"download_id": did, "path": dl, "delivered_at": when, "grants": grants})
    assert can_read(alice, target_root / "pcalice/old/INV/ds/a.dat")
    return alice, policy, ledger


def tree(root: Path) -> dict[str, tuple]:
    return {str(p.relative_to(root)): snapshot(p) for p in sorted(root.rglob("*"))}


def test_removes_only_expired_deliveries(target_root, setup):  # noqa: F811
    alice, policy, ledger = setup
    records: list[dict] = []
    results = cleanup(ledger, root=str(target_root), policy=policy, now=NOW,
                      record=records.append)
    assert [(r.download_id, r.outcome) for r in results] == [
        (1, CleanupOutcome.REMOVED), (2, CleanupOutcome.KEPT)]
    assert results[0].files_removed == 4 and results[0].dirs_removed == 4
    assert not (target_root / "pcalice/old").exists()
    assert (target_root / "pcalice/new/INV/ds/sub/b.dat").is_file()
    assert can_read(alice, target_root / "pcalice/new/INV/ds/sub/b.dat")  # traverse kept
    removal = [r for r in records if r["kind"] == "remove-delivery"]
    assert removal[0]["download_id"] == 1 and removal[0]["outcome"] == "removed"
    json.dumps(records)
    # once the last delivery of the user goes, the traverse grant on pcalice/ is revoked too
    later = NOW + timedelta(days=30)
    records.clear()
    results = cleanup(ledger, root=str(target_root), policy=policy, now=later,
                      record=records.append)
    assert [r.outcome for r in results] == [CleanupOutcome.GONE, CleanupOutcome.REMOVED]
    assert results[1].grants_revoked == 1
    assert f"user:{alice.uid}" not in getfacl(target_root / "pcalice")
    assert (target_root / "pcalice").is_dir()  # directories above a delivery are kept
    assert any(r["kind"] == "revoke-acl" and r["path"] == "pcalice" for r in records)


def test_dry_run_changes_nothing(target_root, setup):  # noqa: F811
    _alice, policy, ledger = setup
    before = tree(target_root)
    lines: list[str] = []
    code = cleanup_command(ledger, root=str(target_root), policy=policy, dry_run=True,
                           out=lines.append)
    assert code == 0
    assert tree(target_root) == before
    assert any(line.startswith("[dry run] download 1") and "would-remove" in line
               for line in lines), lines


def test_files_it_did_not_deliver_are_left(target_root, setup):  # noqa: F811
    alice, policy, ledger = setup
    foreign = target_root / "pcalice/old/INV/ds/mine.txt"
    foreign.write_text("the user's own notes")
    changed = target_root / "pcalice/old/c.dat"
    changed.write_text("replaced by the user")
    results = cleanup(ledger, root=str(target_root), policy=policy, now=NOW)
    assert results[0].outcome is CleanupOutcome.REMOVED
    assert foreign.read_text() == "the user's own notes"
    assert changed.read_text() == "replaced by the user"
    assert not (target_root / "pcalice/old/INV/ds/a.dat").exists()
    assert not (target_root / "pcalice/old/INV/ds/sub").exists()
    assert "c.dat (changed since delivery)" in results[0].left_behind
    # the grants on what remains are revoked
    assert not can_read(alice, foreign.parent)
    assert f"user:{alice.uid}" not in getfacl(foreign.parent)


def test_refuses_what_is_not_provably_its_own(target_root, setup):  # noqa: F811
    _alice, policy, ledger = setup
    (target_root / "pcalice/old" / MANIFEST_NAME).write_text(json.dumps(
        dict(json.loads((target_root / "pcalice/new" / MANIFEST_NAME).read_text()))))
    stranger = {"download_id": 9, "path": "pcalice/elsewhere", "delivered_at": OLD}
    (target_root / "pcalice/elsewhere").mkdir()
    (target_root / "pcalice/elsewhere/data.dat").write_text("not pollcat's")
    before = tree(target_root)
    lines: list[str] = []
    assert cleanup_command([ledger[0], stranger], root=str(target_root), policy=policy,
                           out=lines.append) == 1
    assert tree(target_root) == before
    assert sum(line.startswith("download") and "refused" in line for line in lines) == 2


def test_symlinks_are_never_followed(target_root, setup):  # noqa: F811
    _alice, policy, ledger = setup
    outside = target_root.parent / (target_root.name + "-outside")
    try:
        shutil.copytree(target_root / "pcalice/old", outside, symlinks=True)
        before = tree(outside)
        # the download's directory swapped for a symlink to a copy elsewhere
        shutil.rmtree(target_root / "pcalice/old")
        (target_root / "pcalice/old").symlink_to(outside)
        results = cleanup(ledger, root=str(target_root), policy=policy, now=NOW)
        assert results[0].outcome is CleanupOutcome.REFUSED
        assert tree(outside) == before
        # a listed file swapped for a symlink is left (and so is what it points to)
        (target_root / "pcalice/old").unlink()
        shutil.copytree(outside, target_root / "pcalice/old", symlinks=True)
        (target_root / "pcalice/old/c.dat").unlink()
        (target_root / "pcalice/old/c.dat").symlink_to(outside / "c.dat")
        results = cleanup(ledger, root=str(target_root), policy=policy, now=NOW)
        assert results[0].outcome is CleanupOutcome.REMOVED
        assert (target_root / "pcalice/old/c.dat").is_symlink()
        assert tree(outside) == before
    finally:
        shutil.rmtree(outside, ignore_errors=True)


def test_manifest_paths_cannot_escape(target_root, setup):  # noqa: F811
    _alice, policy, ledger = setup
    victim = target_root / "pcalice/new/c.dat"
    manifest_path = target_root / "pcalice/old" / MANIFEST_NAME
    data = json.loads(manifest_path.read_text())
    data["files"].append({"path": "../new/c.dat", "size": victim.stat().st_size, "crc32": None,
                          "datafile_id": 99})
    manifest_path.write_text(json.dumps(data))
    results = cleanup(ledger, root=str(target_root), policy=policy, now=NOW)
    assert victim.is_file()
    assert any(x.startswith("../new/c.dat") for x in results[0].left_behind)


def test_retention_zero_keeps_everything(target_root, setup):  # noqa: F811
    _alice, _policy, ledger = setup
    forever = AccessPolicy(retention_days=0, accounts="none", acl_user=False)
    before = tree(target_root)
    lines: list[str] = []
    assert cleanup_command(ledger, root=str(target_root), policy=forever, out=lines.append) == 0
    results = cleanup(ledger, root=str(target_root), policy=forever, now=NOW + timedelta(999))
    assert {r.outcome for r in results} == {CleanupOutcome.KEPT}
    assert tree(target_root) == before
