"""Retention that works on every run (issue 20): nothing of pollcat's but the manifest stays in a
delivered folder, a dry run changes nothing (disk or ledger), cleanup is idempotent, the last
delivery's traverse grant goes, EXPIRED downloads are removed after retention, and S3 targets
get the same (incomplete multipart uploads included)."""

from __future__ import annotations

import json
import os
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import fsspec
import pytest

from pollcat.access import AccessPolicy
from pollcat.access.retention import CleanupOutcome, cleanup
from pollcat.claim import ClaimResult, acquire
from pollcat.errors import DeliveryLocked
from pollcat.manifest import MANIFEST_NAME, write_manifest
from pollcat.state import StateStore
from pollcat.states import OutcomeKind, Verdict
from pollcat.targetfs import open_target
from tests.conftest import scenario
from tests.pollcat.test_access_fixtures import (
    account_db,  # noqa: F401  (fixture)
    can_read,
    getfacl,
    target_root,  # noqa: F401  (fixture)
)
from tests.support import delivered_files, pipeline_for, statuses, wait_status

ALICE = {"user": "simple/alice", "transport": "globus", "file_name": "alice_run42",
         "email": "alice@example.org", "items": [{"investigation": "INV-001", "dataset": "run-42"}]}
LONG_AGO = "2000-01-01T00:00:00+00:00"
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="access tests run as root")


def tree(root: Path) -> dict[str, tuple]:
    """Every object under root: kind, size, mode, owner, mtime (what a change would touch)."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_uid, st.st_mtime_ns)
    return out


def ledger_files(state: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((state / "LILS/ledger").glob("*.json"))}


# --- the claim: released by deletion once the manifest is durable ---------------------------


def test_a_delivered_claim_is_deleted_and_the_manifest_names_the_directory(tmp_path):
    tfs = open_target(fsspec.filesystem("file"), str(tmp_path / "t"))
    claim = acquire(tfs, "alice/dl", facility="LILS", download_id=1)
    assert claim.result is ClaimResult.ACQUIRED
    (tmp_path / "t/alice/dl/.pollcat/x.pollcat-part").write_bytes(b"left by a killed attempt")
    write_manifest(tfs, "alice/dl", facility="LILS", download_id=1, file_name="dl",
                   user="simple/alice", transport="globus", files=[])
    claim.delivered()
    claim.release()
    assert sorted(p.name for p in (tmp_path / "t/alice/dl").iterdir()) == [MANIFEST_NAME]
    # the manifest now keeps other downloads out, as the claim file did
    assert acquire(tfs, "alice/dl", facility="LILS",
                   download_id=2).result is ClaimResult.OTHER_DOWNLOAD
    assert acquire(tfs, "alice/dl", facility="OTHER",
                   download_id=1).result is ClaimResult.OTHER_DOWNLOAD
    again = acquire(tfs, "alice/dl", facility="LILS", download_id=1)
    assert again.result is ClaimResult.ACQUIRED
    again.release()  # not delivered by this claim: the lease goes to 0, the file stays
    assert (tmp_path / "t/alice/dl/.pollcat").is_dir()


def test_a_stalled_former_owner_does_not_mistake_a_new_generation_0_for_its_own(tmp_path):
    tfs = open_target(fsspec.filesystem("file"), str(tmp_path / "t"))
    stalled = acquire(tfs, "alice/dl", facility="LILS", download_id=1, lease_s=0.01)
    stalled.check()
    staging = tmp_path / "t/alice/dl/.pollcat"
    (staging / ".pollcat-claim.0").unlink()  # a successor took over, delivered, released
    newcomer = acquire(tfs, "alice/dl", facility="LILS", download_id=1)
    assert newcomer.result is ClaimResult.ACQUIRED and newcomer.generation == 0
    with pytest.raises(DeliveryLocked):
        stalled.check()  # same name, not its file: it must not place anything
    newcomer.check()


def test_a_release_without_our_token_deletes_nothing(tmp_path):
    tfs = open_target(fsspec.filesystem("file"), str(tmp_path / "t"))
    mine = acquire(tfs, "alice/dl", facility="LILS", download_id=1)
    path = tmp_path / "t/alice/dl/.pollcat/.pollcat-claim.0"
    record = json.loads(path.read_text())
    path.write_text(json.dumps(dict(record, token="f" * 32)))  # someone else's now
    mine.delivered()
    mine.release()
    assert path.is_file() and json.loads(path.read_text())["token"] == "f" * 32


# --- the whole pipeline on a local target ----------------------------------------------------


@as_root
def test_cleanup_dry_run_changes_nothing_and_every_later_run_is_a_no_op(
        make_sim, tmp_path, account_db, target_root):  # noqa: F811
    alice = account_db.add_user("alice")
    sim = make_sim(scenario(downloads=[ALICE]))
    wait_status(sim.url, "RESTORING")
    access = {"account_db_root": str(account_db.root), "retention_days": 15}
    pipe = pipeline_for(sim, tmp_path, target_url=f"file://{target_root}", access=access)
    (out,) = pipe.sweep()
    assert out.outcome == OutcomeKind.COMPLETED, out
    root = target_root / "globus"
    delivery = root / "alice/alice_run42"
    # nothing of pollcat's but the manifest in the user's folder after COMPLETE
    assert not (delivery / ".pollcat").exists()
    assert not [p for p in delivery.rglob("*") if p.name.startswith(".pollcat")
                or p.name.endswith(".pollcat-part")]
    assert (delivery / MANIFEST_NAME).is_file()
    assert f"user:{alice.uid}:" in getfacl(root / "alice")  # the traverse grant

    ledger = StateStore(tmp_path / "state", "LILS")
    ledger.update(1, delivered_at=LONG_AGO)
    disk, records = tree(target_root), ledger_files(tmp_path / "state")
    lines: list[str] = []
    assert pipe.cleanup(dry_run=True, out=lines.append) == 0
    assert any("would-remove" in line for line in lines)
    assert tree(target_root) == disk and ledger_files(tmp_path / "state") == records
    checked: list[str] = []
    assert pipe.verify(out=checked.append) == 0
    assert any(line.startswith("download 1: ok") for line in checked), checked

    assert pipe.cleanup(out=lines.append) == 0
    assert not delivery.exists() and not delivered_files(root)
    assert ledger.get(1).removed[-1]["outcome"] == "removed"
    assert f"user:{alice.uid}:" not in getfacl(root / "alice")  # revoked with the last one
    assert not can_read(alice, root / "alice")
    disk, records = tree(target_root), ledger_files(tmp_path / "state")
    for run in range(2, 11):
        lines.clear()
        assert pipe.cleanup(out=lines.append) == 0, (run, lines)
        assert any("gone" in line for line in lines)
        assert tree(target_root) == disk and ledger_files(tmp_path / "state") == records


@as_root
def test_an_expired_download_with_a_refused_grant_is_removed_after_retention(
        make_sim, tmp_path, account_db, target_root):  # noqa: F811
    sim = make_sim(scenario(downloads=[ALICE]))  # no account "alice": the grant is refused
    wait_status(sim.url, "RESTORING")
    access = {"account_db_root": str(account_db.root), "retention_days": 15}
    pipe = pipeline_for(sim, tmp_path, target_url=f"file://{target_root}", access=access)
    (out,) = pipe.sweep()
    assert out.outcome == OutcomeKind.EXPIRED, out
    assert statuses(sim.url) == {1: "EXPIRED"}
    ledger = StateStore(tmp_path / "state", "LILS")
    rec = ledger.get(1)
    assert rec.verdict == Verdict.EXPIRED and rec.expired_at and not rec.delivered_at
    delivery = target_root / "globus/alice/alice_run42"
    if delivery.exists():  # data placed before the grant was refused: the ledger must know
        assert rec.path == "alice/alice_run42" and rec.transport == "globus"
    lines: list[str] = []
    assert pipe.cleanup(out=lines.append) == 0  # not old enough yet: kept
    assert delivery.exists() == bool(rec.path)
    ledger.update(1, expired_at=LONG_AGO)
    assert pipe.cleanup(out=lines.append) == 0, lines
    assert not delivery.exists(), lines
    assert not list((target_root / "globus").rglob("*.pollcat*"))
    disk = tree(target_root)
    assert pipe.cleanup(out=lines.append) == 0 and tree(target_root) == disk


# --- retention of an EXPIRED download without a manifest (data partly placed) ---------------

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
OLD = (NOW - timedelta(days=20)).isoformat()


def _claim(dir: Path, download_id: int, expires_at: float = 0.0) -> None:
    staging = dir / ".pollcat"
    staging.mkdir(parents=True, mode=0o700)
    (staging / ".pollcat-claim.3").write_text(json.dumps({
        "facility": "LILS", "download_id": download_id, "token": "a" * 32, "host": "h",
        "pid": 1, "expires_at": expires_at}))


@as_root
def test_an_expired_download_without_manifest_loses_only_what_pollcat_placed(
        tmp_path, account_db):  # noqa: F811
    bob = account_db.add_user("bob")
    root = tmp_path / "root"
    dl = root / "alice/run"
    (dl / "INV/ds").mkdir(parents=True)
    (dl / "INV/ds/a.dat").write_bytes(b"a" * 10)      # placed by pollcat
    _claim(dl, 7)
    (dl / ".pollcat/b.dat.pollcat-part").write_bytes(b"partial")
    (dl / "INV/ds/mine.txt").write_bytes(b"bob's")
    os.chown(dl / "INV/ds/mine.txt", bob.uid, bob.gid)
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"not in the delivery")
    (dl / "INV/link").symlink_to(outside)
    (dl / "INV/hard").hardlink_to(outside)
    policy = AccessPolicy(retention_days=15)
    record = {"download_id": 7, "path": "alice/run", "expired_at": OLD}
    written: list[dict] = []
    (dry,) = cleanup([record], root=str(root), policy=policy, now=NOW, dry_run=True,
                     record=written.append)
    assert dry.outcome is CleanupOutcome.WOULD_REMOVE and not written
    assert (dl / "INV/ds/a.dat").exists() and (dl / ".pollcat").exists()
    (result,) = cleanup([record], root=str(root), policy=policy, now=NOW, record=written.append)
    assert result.outcome is CleanupOutcome.REMOVED, result.describe()
    assert not (dl / "INV/ds/a.dat").exists() and not (dl / ".pollcat").exists()
    assert (dl / "INV/ds/mine.txt").read_bytes() == b"bob's"
    assert (dl / "INV/link").is_symlink() and (dl / "INV/hard").exists()
    assert outside.read_bytes() == b"not in the delivery"
    assert sorted(x.split(" ")[0] for x in result.left_behind) == [
        "INV/ds/mine.txt", "INV/hard", "INV/link"]
    assert [w["outcome"] for w in written] == ["removed"]
    # the next runs: removed earlier (what is left is not pollcat's) -> gone, nothing recorded
    (again,) = cleanup([dict(record, removed=True)], root=str(root), policy=policy, now=NOW,
                       record=written.append)
    assert again.outcome is CleanupOutcome.GONE and len(written) == 1


@as_root
def test_an_expired_directory_without_our_claim_is_refused_and_a_live_one_kept(tmp_path):
    root = tmp_path / "root"
    policy = AccessPolicy(retention_days=15)
    _claim(root / "alice/other", 8)  # another download's
    (root / "alice/other/f.dat").write_bytes(b"x")
    _claim(root / "alice/live", 9, expires_at=datetime.now(UTC).timestamp() + 600)
    (root / "alice/live/f.dat").write_bytes(b"x")
    refused, live = cleanup([{"download_id": 7, "path": "alice/other", "expired_at": OLD},
                             {"download_id": 9, "path": "alice/live", "expired_at": OLD}],
                            root=str(root), policy=policy, now=NOW)
    assert refused.outcome is CleanupOutcome.REFUSED
    assert live.outcome is CleanupOutcome.KEPT and "being delivered" in (live.reason or "")
    assert (root / "alice/other/f.dat").exists() and (root / "alice/live/f.dat").exists()


# --- S3 ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def endpoint():
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def _s3_pipe(make_sim, tmp_path, endpoint, scn):
    from pollcat.delivery_s3 import s3_settings
    from pollcat.s3target import S3Target

    bucket = f"deliveries-{uuid.uuid4().hex[:10]}"
    options = {"key": "k", "secret": "s3-secret-value", "endpoint_url": endpoint,
               "client_kwargs": {"region_name": "us-east-1"}}
    sim = make_sim(scn)
    wait_status(sim.url, "RESTORING")
    pipe = pipeline_for(sim, tmp_path, target_url=f"s3://{bucket}/pollcat",
                        storage_options=options, access={"retention_days": 15})
    store = S3Target(s3_settings(pipe.cfg.routes["globus"]))
    store.fs.call_s3("create_bucket", Bucket=bucket)
    return sim, pipe, store


def _keys(store) -> list[str]:
    answer = store.fs.call_s3("list_objects_v2", Bucket=store.settings.bucket)
    return sorted(o["Key"] for o in answer.get("Contents", []))


def _uploads(store) -> list[str]:
    answer = store.fs.call_s3("list_multipart_uploads", Bucket=store.settings.bucket)
    return [u["Key"] for u in answer.get("Uploads", [])]


def test_s3_redelivery_leaves_no_incomplete_upload_and_retention_removes_it(
        make_sim, tmp_path, endpoint):
    sim, pipe, store = _s3_pipe(make_sim, tmp_path, endpoint, scenario(downloads=[ALICE]))
    # what a delivery killed mid multipart upload leaves (test_s3target proves a SIGKILL does):
    # an upload with a part sent and never completed, under the download's prefix
    key = "pollcat/globus/alice/alice_run42/INV-001/run-42/scan_0001.nxs"
    bucket = store.settings.bucket
    upload = store.fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key)["UploadId"]
    store.fs.call_s3("upload_part", Bucket=bucket, Key=key, UploadId=upload, PartNumber=1,
                     Body=b"x" * (5 << 20))
    assert _uploads(store) == [key]
    (out,) = pipe.sweep()
    assert out.outcome == OutcomeKind.COMPLETED, out
    assert _uploads(store) == []  # the redelivery aborted the killed attempt's upload
    delivered = _keys(store)
    assert any(k.endswith(MANIFEST_NAME) for k in delivered) and len(delivered) >= 3
    ledger = StateStore(tmp_path / "state", "LILS")
    assert ledger.get(1).path == "alice/alice_run42"

    ledger.update(1, delivered_at=LONG_AGO)
    records = ledger_files(tmp_path / "state")
    lines: list[str] = []
    assert pipe.cleanup(dry_run=True, out=lines.append) == 0
    assert _keys(store) == delivered and ledger_files(tmp_path / "state") == records
    assert pipe.cleanup(out=lines.append) == 0, lines
    assert _keys(store) == [] and _uploads(store) == []
    assert ledger.get(1).removed[-1]["outcome"] == "removed"
    records = ledger_files(tmp_path / "state")
    for _ in range(3):
        lines.clear()
        assert pipe.cleanup(out=lines.append) == 0, lines
        assert any("gone" in line for line in lines)
        assert ledger_files(tmp_path / "state") == records


def test_s3_retention_of_an_expired_download_keeps_what_pollcat_did_not_store(endpoint):
    import zlib

    from pollcat.s3target import S3Settings, S3Target
    from pollcat.transfer import FileJob, format_crc

    bucket = f"deliveries-{uuid.uuid4().hex[:10]}"
    store = S3Target(S3Settings(bucket=bucket, prefix="p", endpoint_url=endpoint,
                                access_key_id="k", secret_access_key="s",
                                region="us-east-1", addressing_style="path"))
    store.fs.call_s3("create_bucket", Bucket=bucket)
    data = b"verified bytes"
    store.write_file(FileJob(1, "a.dat", "alice/run/a.dat", len(data),
                             format_crc(zlib.crc32(data))), [data])
    store.fs.call_s3("put_object", Bucket=bucket, Key="p/alice/run/foreign.txt", Body=b"x")
    store.fs.call_s3("put_object", Bucket=bucket, Key="p/alice/run2/a.dat", Body=b"x")
    dry = store.remove_delivery("alice/run", download_id=3, expired=True, dry_run=True)
    assert dry.removed == 1 and len(_keys(store)) == 3
    done = store.remove_delivery("alice/run", download_id=3, expired=True)
    assert done.removed == 1 and done.left == ["p/alice/run/foreign.txt (not stored by pollcat)"]
    assert _keys(store) == ["p/alice/run/foreign.txt", "p/alice/run2/a.dat"]
    later = store.remove_delivery("alice/run", download_id=3, expired=True, removed_before=True)
    assert later.nothing


@as_root
def test_a_grant_refused_after_the_data_was_placed_is_removed_after_retention(
        make_sim, tmp_path, account_db, target_root, monkeypatch):  # noqa: F811
    """Whatever refuses the grant after the transfer (uid above max_uid, an account hold that
    timed out), the ledger knows the directory and retention removes what was placed."""
    import pollcat.pipeline
    from pollcat.errors import PermanentError

    def refuse(state, d, plan):
        raise PermanentError("uid 70000 of 'alice' is above max_uid", download_id=d.id)

    monkeypatch.setattr(pollcat.pipeline, "grant_access", refuse)
    account_db.add_user("alice")
    sim = make_sim(scenario(downloads=[ALICE]))
    wait_status(sim.url, "RESTORING")
    access = {"account_db_root": str(account_db.root), "retention_days": 15}
    pipe = pipeline_for(sim, tmp_path, target_url=f"file://{target_root}", access=access)
    (out,) = pipe.sweep()
    assert out.outcome == OutcomeKind.EXPIRED, out
    delivery = target_root / "globus/alice/alice_run42"
    assert delivered_files(delivery)  # the data is there
    assert not (delivery / ".pollcat").exists() or not os.stat(delivery / ".pollcat").st_mode \
        & 0o077  # pollcat's staging, if any, is private
    ledger = StateStore(tmp_path / "state", "LILS")
    rec = ledger.get(1)
    assert rec.path == "alice/alice_run42" and rec.expired_at and not rec.delivered_at
    lines: list[str] = []
    assert pipe.cleanup(out=lines.append) == 0 and delivery.exists()  # not old enough
    ledger.update(1, expired_at=LONG_AGO)
    assert pipe.cleanup(out=lines.append) == 0, lines
    assert not delivery.exists(), lines
    disk, records = tree(target_root), ledger_files(tmp_path / "state")
    for _ in range(3):
        assert pipe.cleanup(out=lines.append) == 0, lines
        assert tree(target_root) == disk and ledger_files(tmp_path / "state") == records


@as_root
def test_an_expired_download_killed_before_its_manifest_is_removed_after_retention(
        make_sim, tmp_path, account_db, target_root, monkeypatch):  # noqa: F811
    """No manifest (the transfer failed for good half-way): the claim names the directory and
    retention removes what pollcat placed, the staging directory with its part files too."""
    import pollcat.delivery
    from pollcat.errors import PermanentError

    real = pollcat.delivery.write_manifest

    def fail(*args, **kwargs):
        raise PermanentError("the target refused the manifest")

    monkeypatch.setattr(pollcat.delivery, "write_manifest", fail)
    account_db.add_user("alice")
    sim = make_sim(scenario(downloads=[ALICE]))
    wait_status(sim.url, "RESTORING")
    access = {"account_db_root": str(account_db.root), "retention_days": 15}
    pipe = pipeline_for(sim, tmp_path, target_url=f"file://{target_root}", access=access)
    (out,) = pipe.sweep()
    monkeypatch.setattr(pollcat.delivery, "write_manifest", real)
    assert out.outcome == OutcomeKind.EXPIRED, out
    delivery = target_root / "globus/alice/alice_run42"
    assert delivered_files(delivery) and not (delivery / MANIFEST_NAME).exists()
    assert (delivery / ".pollcat").stat().st_mode & 0o777 == 0o700
    ledger = StateStore(tmp_path / "state", "LILS")
    assert ledger.get(1).path == "alice/alice_run42"
    ledger.update(1, expired_at=LONG_AGO)
    lines: list[str] = []
    assert pipe.cleanup(dry_run=True, out=lines.append) == 0 and delivered_files(delivery)
    assert pipe.cleanup(out=lines.append) == 0, lines
    assert not delivery.exists(), lines
    assert pipe.cleanup(out=lines.append) == 0, lines


def test_both_ledgers_keep_when_a_download_expired_and_retention_reads_it(tmp_path):
    from pollcat.ledger_sql import SqlStateStore, sqlite_url
    from pollcat.maintenance import retention_records

    for store in (StateStore(tmp_path / "state", "LILS"),
                  SqlStateStore(sqlite_url(tmp_path / "ledger.db"), "LILS")):
        store.update(3, verdict=Verdict.EXPIRED, path="alice/x", transport="globus",
                     expired_at="2026-01-01T00:00:00+00:00")
        store.update(4, path="alice/y", transport="globus")  # claimed, still being delivered
        store.update(5, verdict=Verdict.COMPLETED, path="alice/z", transport="globus",
                     delivered_at="2026-01-02T00:00:00+00:00",
                     removed=[{"outcome": "would-remove"}])  # an old dry run's record
        assert store.get(3).expired_at == "2026-01-01T00:00:00+00:00"
        assert retention_records(store, "globus") == [
            {"download_id": 3, "path": "alice/x", "expired_at": "2026-01-01T00:00:00+00:00",
             "grants": [], "removed": False},
            {"download_id": 5, "path": "alice/z", "delivered_at": "2026-01-02T00:00:00+00:00",
             "grants": [], "removed": False}]


# --- SFTP: through the target's own connection --------------------------------------------


def test_target_layer_cleanup_of_an_expired_download_without_manifest(tmp_path):
    """The SFTP cleanup's rules, on the generic target layer: the claim names the directory,
    files of the claim's owner go, a symlink stays, nothing above the directory goes."""
    from pollcat.access.retention_remote import cleanup_target
    from pollcat.targetfs import LocalTarget

    root = tmp_path / "root"
    dl = root / "alice/run"
    (dl / "INV").mkdir(parents=True)
    (dl / "INV/a.dat").write_bytes(b"a")
    _claim(dl, 7)
    (dl / ".pollcat/1.pollcat-part").write_bytes(b"part")
    (dl / "INV/link").symlink_to(tmp_path)
    tfs = LocalTarget(str(root))
    record = {"download_id": 7, "path": "alice/run", "expired_at": OLD}
    written: list[dict] = []
    (dry,) = cleanup_target([record], tfs, retention_days=15, now=NOW, dry_run=True,
                            record=written.append)
    assert dry.outcome is CleanupOutcome.WOULD_REMOVE and not written
    assert (dl / "INV/a.dat").exists()
    (done,) = cleanup_target([record], tfs, retention_days=15, now=NOW, record=written.append)
    assert done.outcome is CleanupOutcome.REMOVED and done.files_removed == 3, done.describe()
    assert not (dl / "INV/a.dat").exists() and not (dl / ".pollcat").exists()
    assert (dl / "INV/link").is_symlink() and (root / "alice").is_dir()
    (again,) = cleanup_target([dict(record, removed=True)], tfs, retention_days=15, now=NOW,
                              record=written.append)
    assert again.outcome is CleanupOutcome.GONE and len(written) == 1
    (other,) = cleanup_target([{"download_id": 8, "path": "alice/run", "expired_at": OLD}],
                              tfs, retention_days=15, now=NOW)
    assert other.outcome is CleanupOutcome.REFUSED


def _traverse_grant(path: str, account: str, uid: int, before: str | None = None) -> dict:
    """A traverse grant record as SshHelperHook.apply writes it to the ledger."""
    return {"kind": "grant-acl", "hook": "ssh-helper", "scope": "traverse", "path": path,
            "object": "dir", "account": account, "uid": uid, "acl": {f"user:{uid}": "r-x"},
            "previous": {"acl": {} if before is None else {f"user:{uid}": before}}}


class _FakeHelper:
    """SshHelperHook.revoke_traverse's interface, recording the calls."""

    name = "ssh-helper"

    def __init__(self, fail: Exception | None = None):
        self.calls: list[tuple[int, str | None, list[str]]] = []
        self.fail = fail

    def revoke_traverse(self, ctx, dirs, record=None) -> int:
        if self.fail is not None:
            raise self.fail
        self.calls.append((ctx.download_id, ctx.account, list(dirs)))
        for rel in dirs:
            if record is not None:
                record({"download_id": ctx.download_id, "kind": "revoke-acl", "path": rel,
                        "scope": "traverse", "hook": "ssh-helper"})
        return len(dirs)


def test_target_layer_cleanup_revokes_the_traverse_grant_with_the_last_delivery(tmp_path):
    """As locally: `alice/` keeps her traverse grant while one of her deliveries lives, and
    loses it (through the helper's revoke-traverse) with the last; an entry she had before
    pollcat's grant is not pollcat's to remove; a helper without the verb leaves it, reported,
    and nothing is refused."""
    from pollcat.access.retention_remote import cleanup_target
    from pollcat.access.sftp import HelperLacksVerb
    from pollcat.targetfs import LocalTarget

    root = tmp_path / "root"
    for name, did in (("alice/run1", 1), ("alice/run2", 2), ("bob/run3", 3)):
        (root / name).mkdir(parents=True)
        (root / name / "a.dat").write_bytes(b"a")
        _claim(root / name, did)
    tfs = LocalTarget(str(root))
    recent = NOW.isoformat()
    run1 = {"download_id": 1, "path": "alice/run1", "expired_at": OLD,
            "grants": [_traverse_grant("alice", "alice", 1001)]}
    run2 = {"download_id": 2, "path": "alice/run2", "expired_at": recent,
            "grants": [_traverse_grant("alice", "alice", 1001, before="r-x")]}
    run3 = {"download_id": 3, "path": "bob/run3", "expired_at": OLD,
            "grants": [_traverse_grant("bob", "bob", 1002, before="--x")]}
    helper, written = _FakeHelper(), []
    # run2 is not old enough: alice/ stays granted; bob had his entry before pollcat: kept
    results = cleanup_target([run1, run2, run3], tfs, retention_days=15, now=NOW,
                             record=written.append, hook=helper)
    assert [r.outcome for r in results] == [CleanupOutcome.REMOVED, CleanupOutcome.KEPT,
                                            CleanupOutcome.REMOVED]
    assert helper.calls == [] and all(r.grants_revoked == 0 for r in results)
    # her last delivery goes: one call for alice/, recorded with the removal
    run1, run2, run3 = (dict(r, removed=True) if r is not run2 else dict(r, expired_at=OLD)
                        for r in (run1, run2, run3))
    (dry,) = [r for r in cleanup_target([run1, run2, run3], tfs, retention_days=15, now=NOW,
                                        dry_run=True, hook=helper)
              if r.download_id == 2]
    assert dry.grants_revoked == 1 and helper.calls == []
    written.clear()
    results = cleanup_target([run1, run2, run3], tfs, retention_days=15, now=NOW,
                             record=written.append, hook=helper)
    assert [r.outcome for r in results] == [CleanupOutcome.GONE, CleanupOutcome.REMOVED,
                                            CleanupOutcome.GONE]
    assert helper.calls == [(2, "alice", ["alice"])] and results[1].grants_revoked == 1
    assert [w["kind"] for w in written] == ["revoke-acl", "remove-delivery"]
    assert written[1]["grants_revoked"] == 1 and (root / "alice").is_dir()
    # again: everything is gone, nothing is called or recorded
    written.clear()
    again = cleanup_target([run1, dict(run2, removed=True), run3], tfs, retention_days=15,
                           now=NOW, record=written.append, hook=helper)
    assert all(r.outcome is CleanupOutcome.GONE for r in again)
    assert helper.calls == [(2, "alice", ["alice"])] and written == []
    # an older helper: the grant is reported left, the delivery removed, nothing refused
    (root / "alice/run4").mkdir()
    _claim(root / "alice/run4", 4)
    old = _FakeHelper(HelperLacksVerb("the access helper on h has no revoke-traverse"))
    (left,) = cleanup_target([{"download_id": 4, "path": "alice/run4", "expired_at": OLD,
                               "grants": [_traverse_grant("alice", "alice", 1001)]}], tfs,
                             retention_days=15, now=NOW, hook=old)
    assert left.outcome is CleanupOutcome.REMOVED and left.grants_revoked == 0
    assert any("traverse grant on alice" in x and "too old" in x for x in left.left_behind)
    assert "traverse grant on alice" in left.describe()


@as_root
@pytest.mark.sshd
def test_sftp_retention_removes_the_delivery_and_reruns_cleanly(
        make_sim, tmp_path, account_db, target_root):  # noqa: F811
    import subprocess
    import sys

    pytest.importorskip("sshfs")
    from tests.sshd import running_sshd

    helper_script = Path(__file__).resolve().parents[2] / "deploy/sftp-helper/pollcat-access-helper"
    python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
    alice = account_db.add_user("alice")
    root = target_root / "globus"
    root.mkdir()
    root.chmod(0o711)
    with running_sshd() as server:
        helper_key = server.dir / "helper_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(helper_key)],
                       check=True, timeout=30)
        command = (f"{python} {helper_script} --root {root} "
                   f"--passwd-file {account_db.root}/etc/passwd")
        keys = server.dir / "authorized_keys" / server.user
        keys.write_text(server.client_key.with_suffix(".pub").read_text() +
                        f'restrict,command="{command}" '
                        f"{helper_key.with_suffix('.pub').read_text()}")
        sim = make_sim(scenario(downloads=[ALICE]))
        wait_status(sim.url, "RESTORING")
        helper = {"host": server.host, "port": server.port, "user": server.user,
                  "key_file": str(helper_key), "known_hosts": str(server.known_hosts)}
        pipe = pipeline_for(sim, tmp_path, target_url=server.url(target_root),
                            storage_options=server.storage_options(),
                            access={"retention_days": 15}, access_helper=helper)
        (out,) = pipe.sweep()
        assert out.outcome == OutcomeKind.COMPLETED, out
        delivery = root / "alice/alice_run42"
        assert delivered_files(delivery) and not (delivery / ".pollcat").exists()
        ledger = StateStore(tmp_path / "state", "LILS")
        ledger.update(1, delivered_at=LONG_AGO)
        disk, records = tree(target_root), ledger_files(tmp_path / "state")
        lines: list[str] = []
        assert pipe.cleanup(dry_run=True, out=lines.append) == 0, lines
        assert tree(target_root) == disk and ledger_files(tmp_path / "state") == records
        home = root / "alice"
        her_entry = re.compile(rf"^user:{alice.uid}:", re.M)
        assert her_entry.search(getfacl(home)) and can_read(alice, home)  # her traverse grant
        assert any(g.get("scope") == "traverse" and g.get("path") == "alice"
                   for g in ledger.get(1).grants)
        assert pipe.cleanup(out=lines.append) == 0, lines
        assert not delivery.exists(), lines
        assert home.is_dir()  # never above the download's directory
        assert not any("cannot revoke" in line or "note:" in line for line in lines), lines
        # her last delivery there is gone: so is her entry on alice/, and her listing of it
        assert not her_entry.search(getfacl(home)), getfacl(home)
        assert not can_read(alice, home)
        removed = ledger.get(1).removed
        assert removed[-1]["outcome"] == "removed" and removed[-1]["grants_revoked"] == 1
        assert any(r.get("kind") == "revoke-acl" and r.get("scope") == "traverse"
                   and r.get("path") == "alice" for r in removed), removed
        disk, records = tree(target_root), ledger_files(tmp_path / "state")
        acl = getfacl(home)
        for _ in range(3):
            lines.clear()
            assert pipe.cleanup(out=lines.append) == 0, lines
            assert any("gone" in line for line in lines)
            assert tree(target_root) == disk and ledger_files(tmp_path / "state") == records
            assert getfacl(home) == acl


def test_an_s3_target_takes_a_retention_policy_and_sftp_still_needs_its_helper():
    from pollcat.config import TargetConfig
    from pollcat.errors import ConfigurationError

    s3 = TargetConfig(url="s3://bucket/prefix", access={"retention_days": 15})
    assert s3.access_policy is not None and s3.access_policy.retention_days == 15
    with pytest.raises(ConfigurationError, match="access_helper"):
        TargetConfig(url="sftp://host/scratch", access={"retention_days": 15})
