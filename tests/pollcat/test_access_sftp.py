"""Access on SFTP targets, behind a real OpenSSH sshd on 127.0.0.1.

The helper (deploy/sftp-helper/pollcat-access-helper) is reached through an authorized_keys
line with `restrict,command=...`, exactly as documented for production; the key can run nothing
else. The "server" is this machine, so what it grants is checked by reading as the test users.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pollcat.access import AccessContext, AccessPolicy
from pollcat.access.errors import RemoteHelperFailed, RemoteHelperUnreachable
from pollcat.access.sftp import SftpModeHook, SshHelperHook, SshHelperTarget
from tests.pollcat.test_access_fixtures import (
    account_db,  # noqa: F401  (fixture)
    can_read,
    getfacl,
    snapshot,
    target_root,  # noqa: F401  (fixture)
)
from tests.pollcat.test_access_hooks import DL, FILES, deliver, delivered_objects
from tests.sshd import SshServer, running_sshd

pytestmark = [pytest.mark.sshd,
              pytest.mark.skipif(os.geteuid() != 0, reason="access tests run as root")]

HELPER = Path(__file__).resolve().parents[2] / "deploy/sftp-helper/pollcat-access-helper"
PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


def forced_command_line(server: SshServer, root: Path, passwd: Path) -> str:
    """The documented authorized_keys line, with the test's root and account database."""
    command = f"{PYTHON} {HELPER} --root {root} --passwd-file {passwd}"
    public_key = server.client_key.with_suffix(".pub").read_text().strip()
    return f'restrict,command="{command}" {public_key}\n'


@pytest.fixture
def helper_sshd(account_db, target_root) -> Iterator[SshServer]:  # noqa: F811
    with running_sshd() as server:
        keys = server.dir / "authorized_keys" / server.user
        keys.write_text(forced_command_line(server, target_root,
                                            account_db.root / "etc/passwd"))
        yield server


def helper_target(server: SshServer) -> SshHelperTarget:
    return SshHelperTarget(host=server.host, port=server.port, user=server.user,
                           key_file=str(server.client_key), known_hosts=str(server.known_hosts),
                           timeout=60)


def raw_ssh(server: SshServer, command: str) -> subprocess.CompletedProcess:
    """Send any command string, bypassing pollcat's own validation."""
    argv = helper_target(server).argv([command], "/usr/bin/ssh")
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def ctx_for(root: Path, account: str = "pcalice") -> AccessContext:
    return AccessContext(download_id=42, icat_user=f"simple/{account}", account=account,
                         root=str(root), download_dir=DL, files=FILES)


def test_helper_grants_read_to_the_user_only(account_db, target_root, helper_sshd):  # noqa: F811
    alice, bob = account_db.add_user("pcalice"), account_db.add_user("pcbob")
    deliver(target_root)
    hook = SshHelperHook(AccessPolicy(), helper_target(helper_sshd))
    ctx = ctx_for(target_root)
    lines: list[str] = []
    planned = hook.dry_run(ctx, lines.append)
    assert planned and "setfacl -m user:" in lines[0]
    assert can_read(bob, target_root / FILES[0])  # the plan changed nothing
    records: list[dict] = []
    assert hook.apply(ctx, planned, records.append) == len(planned)
    assert all(r["download_id"] == 42 and r["hook"] == "ssh-helper" for r in records)
    for path in delivered_objects(target_root):
        assert can_read(alice, path), path
        assert not can_read(bob, path), path
    # idempotent: nothing left to plan or apply
    assert hook.plan(ctx) == []
    assert hook.apply(ctx, [], records.append) == 0
    # revoke takes the user's entries away again
    assert hook.revoke(ctx, records) > 0
    assert not can_read(alice, target_root / FILES[0])


@pytest.mark.parametrize("command", [
    "grant 42 pcalice;id alice/alice_run42",
    "grant 42 root alice/alice_run42",
    "grant 42 daemon alice/alice_run42",
    "grant 42 pcalice ../../etc",
    "grant 42 pcalice alice/alice_run42/../..",
    "grant 42 pcalice /etc",
    "grant 42 pcalice -rf",
    "grant 4x2 pcalice alice/alice_run42",
    "grant 42 pcghost alice/alice_run42",
    "grant 42 pcalice alice/alice_run42 extra",
    "touch /tmp/pollcat-access-pwned",
    "sh -c id",
    "",
])
def test_helper_refuses_anything_else(account_db, target_root, helper_sshd, command):  # noqa: F811
    account_db.add_user("pcalice")
    deliver(target_root)
    before = {p: snapshot(p) for p in delivered_objects(target_root)}
    proc = raw_ssh(helper_sshd, command)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "refused" in proc.stderr
    assert not Path("/tmp/pollcat-access-pwned").exists()
    assert {p: snapshot(p) for p in before} == before


def test_helper_does_not_follow_symlinks(account_db, target_root, helper_sshd):  # noqa: F811
    account_db.add_user("pcalice")
    deliver(target_root)
    outside = target_root.parent / (target_root.name + "-outside")
    outside.mkdir()
    try:
        (outside / "secret").write_text("not yours")
        (outside / "secret").chmod(0o600)
        before = {p: snapshot(p) for p in (outside, outside / "secret")}
        run_dir = target_root / DL / "INV-001/1/run-42"
        (run_dir / "evil.nxs").symlink_to(outside / "secret")
        (run_dir / "evil-dir").symlink_to(outside)
        records: list[dict] = []
        SshHelperHook(AccessPolicy(), helper_target(helper_sshd)).apply(
            ctx_for(target_root), [], records.append)
        assert {p: snapshot(p) for p in before} == before
        assert not any("evil" in r["path"] for r in records)
        # the download directory itself swapped for a symlink: refused outright
        os.rename(target_root / DL, target_root / "alice/moved")
        (target_root / DL).symlink_to(outside)
        with pytest.raises(RemoteHelperFailed, match="symbolic link"):
            SshHelperHook(AccessPolicy(), helper_target(helper_sshd)).plan(ctx_for(target_root))
        assert {p: snapshot(p) for p in before} == before
    finally:
        subprocess.run(["rm", "-rf", "--", str(outside)], check=True)


def _traverse_granted(root: Path, *people) -> None:
    """alice/ as `grant ... own=0` leaves it: `r-x` for each of `people`, plus a default
    entry (not the helper's) that revoke-traverse must leave alone."""
    deliver(root)
    (root / "alice").chmod(0o711)  # as pollcat makes it: others pass, only grants list
    for person in people:
        subprocess.run(["setfacl", "-m", f"u:{person.uid}:r-x", "--", str(root / "alice")],
                       check=True, timeout=30)
    subprocess.run(["setfacl", "-d", "-m", f"u:{people[0].uid}:r-x", "--",
                    str(root / "alice")], check=True, timeout=30)


def test_helper_revoke_traverse_removes_only_the_users_entry(
        account_db, target_root, helper_sshd):  # noqa: F811
    alice, bob = account_db.add_user("pcalice"), account_db.add_user("pcbob")
    _traverse_granted(target_root, alice, bob)
    home = target_root / "alice"
    assert can_read(alice, home) and can_read(bob, home)
    hook = SshHelperHook(AccessPolicy(), helper_target(helper_sshd))
    records: list[dict] = []
    assert hook.revoke_traverse(ctx_for(target_root), ["alice"], records.append) == 1
    (rec,) = records
    assert (rec["kind"], rec["path"], rec["scope"], rec["uid"], rec["account"]) == (
        "revoke-acl", "alice", "traverse", alice.uid, "pcalice")
    acl = getfacl(home)
    assert f"\nuser:{alice.uid}:" not in acl and f"user:{bob.uid}:r-x" in acl
    assert f"default:user:{alice.uid}:r-x" in acl  # only her access entry, nothing else
    assert not can_read(alice, home) and can_read(bob, home)
    # idempotent: the entry (or the whole directory) already gone is success, nothing printed
    before = snapshot(home)
    proc = raw_ssh(helper_sshd, "revoke-traverse 42 pcalice alice")
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr
    assert snapshot(home) == before
    proc = raw_ssh(helper_sshd, "revoke-traverse 42 pcalice nobody-here/alice")
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr


@pytest.mark.parametrize("command", [
    "revoke-traverse 42 pcalice;id alice",
    "revoke-traverse 42 root alice",
    "revoke-traverse 42 daemon alice",
    "revoke-traverse 42 PCALICE alice",
    "revoke-traverse 42 pcghost alice",
    "revoke-traverse 42 pcalice ..",
    "revoke-traverse 42 pcalice alice/..",
    "revoke-traverse 42 pcalice alice/../alice",
    "revoke-traverse 42 pcalice ./alice",
    "revoke-traverse 42 pcalice /etc",
    "revoke-traverse 42 pcalice -x",
    "revoke-traverse 42 pcalice alice//alice_run42",
    "revoke-traverse 42 pcalice alice own=0",
    "revoke-traverse x42 pcalice alice",
    "revoke-traverse 42 pcalice",
    "revoke-traverse-all 42 pcalice alice",
])
def test_helper_revoke_traverse_refuses_hostile_words(
        account_db, target_root, helper_sshd, command):  # noqa: F811
    alice = account_db.add_user("pcalice")
    _traverse_granted(target_root, alice)
    objects = [target_root, target_root / "alice", *delivered_objects(target_root)]
    before = {p: snapshot(p) for p in objects}
    proc = raw_ssh(helper_sshd, command)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "refused" in proc.stderr and proc.stdout == ""
    assert {p: snapshot(p) for p in objects} == before


def test_helper_revoke_traverse_refuses_a_symlinked_directory(
        account_db, target_root, helper_sshd):  # noqa: F811
    alice = account_db.add_user("pcalice")
    _traverse_granted(target_root, alice)
    outside = target_root.parent / (target_root.name + "-outside")
    outside.mkdir()
    try:
        subprocess.run(["setfacl", "-m", f"u:{alice.uid}:r-x", "--", str(outside)], check=True,
                       timeout=30)
        (target_root / "elsewhere").symlink_to(outside)
        (target_root / "alias").symlink_to("alice")
        objects = [outside, target_root / "alice"]
        before = {p: snapshot(p) for p in objects}
        for rel in ("elsewhere", "alias", "alias/alice_run42", "alice/alice_run42/../../alias"):
            proc = raw_ssh(helper_sshd, f"revoke-traverse 42 pcalice {rel}")
            assert proc.returncode in (2, 3) and proc.stdout == "", (rel, proc.stderr)
        proc = raw_ssh(helper_sshd, "revoke-traverse 42 pcalice elsewhere")
        assert proc.returncode == 3 and "symbolic link" in proc.stderr, proc.stderr
        assert {p: snapshot(p) for p in objects} == before
        with pytest.raises(RemoteHelperFailed, match="symbolic link"):
            SshHelperHook(AccessPolicy(), helper_target(helper_sshd)).revoke_traverse(
                ctx_for(target_root), ["alias"])
    finally:
        subprocess.run(["rm", "-rf", "--", str(outside)], check=True)


OLD_HELPER = """#!/bin/sh
echo 'refused: expected: ping | plan|grant <download-id> <account> <dir> | revoke <download-id> \
<account> <dir>' >&2
exit 2
"""


def test_an_older_helper_without_revoke_traverse_is_told_apart(
        account_db, target_root):  # noqa: F811
    from pollcat.access.sftp import HelperLacksVerb

    account_db.add_user("pcalice")
    with running_sshd() as server:
        old = server.dir / "old-helper"
        old.write_text(OLD_HELPER)
        old.chmod(0o755)
        public_key = server.client_key.with_suffix(".pub").read_text().strip()
        (server.dir / "authorized_keys" / server.user).write_text(
            f'restrict,command="{old}" {public_key}\n')
        hook = SshHelperHook(AccessPolicy(), helper_target(server))
        with pytest.raises(HelperLacksVerb, match="revoke-traverse"):
            hook.revoke_traverse(ctx_for(target_root), ["alice"])


def test_pollcat_validates_before_calling(account_db, target_root, helper_sshd):  # noqa: F811
    from pollcat.access.errors import InvalidAccountName
    hook = SshHelperHook(AccessPolicy(), helper_target(helper_sshd))
    with pytest.raises(InvalidAccountName):
        hook.plan(ctx_for(target_root, account="a b"))


def test_unreachable_helper_is_transient(target_root):  # noqa: F811
    target = SshHelperTarget(host="127.0.0.1", port=1, user="root", key_file="/nonexistent",
                             known_hosts="/dev/null", timeout=30)
    with pytest.raises(RemoteHelperUnreachable) as err:
        SshHelperHook(AccessPolicy(), target).plan(ctx_for(target_root))
    assert err.value.download_id == 42


def test_sftp_protocol_sets_modes_and_numeric_owner(account_db, target_root):  # noqa: F811
    paramiko = pytest.importorskip("paramiko")
    alice, bob = account_db.add_user("pcalice"), account_db.add_user("pcbob")
    deliver(target_root)
    with running_sshd() as server:
        transport = paramiko.Transport((server.host, server.port))
        try:
            transport.connect(username=server.user,
                              pkey=paramiko.Ed25519Key.from_private_key_file(
                                  str(server.client_key)))
            client = paramiko.SFTPClient.from_transport(transport)
            policy = AccessPolicy(acl_user=False, chown_user=True, file_mode="0600",
                                  dir_mode="0700")
            hook = SftpModeHook(policy, client, owner_uid=alice.uid, owner_gid=alice.gid)
            ctx = ctx_for(target_root)
            records: list[dict] = []
            assert hook.apply(ctx, hook.plan(ctx), records.append) > 0
            assert hook.plan(ctx) == []
            for path in delivered_objects(target_root):
                assert path.stat().st_uid == alice.uid
                assert can_read(alice, path), path
                assert not can_read(bob, path), path
            assert hook.revoke(ctx, records) == len(records)
            assert (target_root / FILES[0]).stat().st_uid == 0
        finally:
            transport.close()


def test_sftp_delivery_grants_through_the_helper(make_sim, tmp_path, account_db,  # noqa: F811
                                                 target_root):  # noqa: F811
    """A whole delivery over SFTP with an access policy: the data goes through SFTP with one
    key, the grant through the forced-command helper with another, before COMPLETE."""
    from pollcat.state import StateStore
    from pollcat.states import OutcomeKind
    from tests.conftest import scenario
    from tests.support import delivered_files, pipeline_for, statuses, wait_status

    alice, bob = account_db.add_user("alice"), account_db.add_user("bob")
    root = target_root / "globus"
    root.mkdir()
    root.chmod(0o711)
    with running_sshd() as server:
        helper_key = server.dir / "helper_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(helper_key)],
                       check=True, timeout=30)
        command = f"{PYTHON} {HELPER} --root {root} --passwd-file {account_db.root}/etc/passwd"
        keys = server.dir / "authorized_keys" / server.user
        keys.write_text(server.client_key.with_suffix(".pub").read_text() +
                        f'restrict,command="{command}" '
                        f"{helper_key.with_suffix('.pub').read_text()}")
        sim = make_sim(scenario(downloads=[{
            "user": "simple/alice", "transport": "globus", "file_name": "alice_run42",
            "items": [{"investigation": "INV-001", "dataset": "run-42"}]}]))
        wait_status(sim.url, "RESTORING")
        helper = {"host": server.host, "port": server.port, "user": server.user,
                  "key_file": str(helper_key), "known_hosts": str(server.known_hosts)}
        pipe = pipeline_for(sim, tmp_path, target_url=server.url(target_root),
                            storage_options=server.storage_options(), access={},
                            access_helper=helper)
        (out,) = pipe.sweep()
        assert out.outcome == OutcomeKind.COMPLETED, out
    assert statuses(sim.url) == {1: "COMPLETE"}
    files = delivered_files(root)
    assert len(files) == 2
    for path in files.values():
        assert can_read(alice, path), path
        assert not can_read(bob, path), path
    # her own directory (made 0711 over SFTP): she lists it through the helper's grant
    assert can_read(alice, root / "alice") and not can_read(bob, root / "alice")
    grants = StateStore(tmp_path / "state", "LILS").get(1).grants
    assert grants and all(g["hook"] == "ssh-helper" for g in grants)
