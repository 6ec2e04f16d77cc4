"""The POSIX access hook against real setfacl/getfacl/useradd, proved by reading as users.

Each test delivers a small download tree as root (umask 022, so everything starts
world-readable, as an older pollcat left it: today's is owner-only, see test_access_private),
runs the hook, and then reads every delivered file and directory as the
requesting user (must work) and as another unprivileged user (must fail), in subprocesses that
drop to those users' uids.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from pathlib import Path

import pytest

from pollcat.access import AccessContext, AccessPolicy, ActionKind, PosixAccessHook
from pollcat.access.errors import (
    AccountCreationFailed,
    AccountHold,
    AccountMissing,
    InvalidAccountName,
    SystemAccountRefused,
    UnsafeTargetObject,
)
from pollcat.errors import PermanentError, TransientError
from pollcat.manifest import MANIFEST_NAME
from tests.pollcat.test_access_fixtures import (
    Person,
    account_db,  # noqa: F401  (fixture)
    can_read,
    can_traverse,
    getfacl,
    snapshot,
    target_root,  # noqa: F401  (fixture)
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="access tests run as root")

DL = "alice/alice_run42"
FILES = (f"{DL}/INV-001/1/run-42/scan_0001.nxs", f"{DL}/INV-001/1/run-42/notes/readme.txt")


def deliver(root: Path, download_dir: str = DL, files: tuple[str, ...] = FILES) -> None:
    """Files as an older transfer left them (owned by the service, 0644/0755; pollcat now
    creates them 0600/0700): the hook must narrow these too."""
    old = os.umask(0o022)
    try:
        for rel in files:
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"data of " + rel.encode())
        (root / download_dir / MANIFEST_NAME).write_text(json.dumps({"download_id": 42}))
    finally:
        os.umask(old)


def ctx_for(root: Path, account: str = "pcalice", files: tuple[str, ...] = FILES,
            download_dir: str = DL) -> AccessContext:
    return AccessContext(download_id=42, icat_user=f"simple/{account}", account=account,
                         root=str(root), download_dir=download_dir, files=files)


def delivered_objects(root: Path) -> list[Path]:
    """Every directory of the download and every file in it, the manifest included."""
    base = root / DL
    return [base, *sorted(base.rglob("*"))]


def run_hook(hook: PosixAccessHook, ctx: AccessContext) -> list[dict]:
    records: list[dict] = []
    hook.apply(ctx, hook.plan(ctx), records.append)
    return records


@pytest.fixture
def people(account_db):  # noqa: F811
    return account_db.add_user("pcalice"), account_db.add_user("pcbob")


def test_user_reads_everything_another_user_nothing(account_db, target_root, people):  # noqa: F811
    alice, bob = people
    deliver(target_root)
    assert can_read(bob, target_root / FILES[0])  # world-readable before the hook
    hook = PosixAccessHook(AccessPolicy(account_db_root=str(account_db.root)))
    records = run_hook(hook, ctx_for(target_root))
    objects = delivered_objects(target_root)
    assert len(objects) == 8  # 5 dirs, 2 files, the manifest
    for path in objects:
        assert can_read(alice, path), path
        assert not can_read(bob, path), path
    assert can_traverse(alice, target_root / "alice")
    assert not can_read(alice, target_root / "alice")  # may reach her download, not list
    # the ledger records: plain, JSON-able, every change on a path inside the root
    json.dumps(records)
    assert {r["kind"] for r in records} == {"set-mode", "grant-acl"}
    assert all(r["download_id"] == 42 and not r["path"].startswith("/") for r in records)
    traverse = [r for r in records if r["scope"] == "traverse"]
    assert [(r["path"], r["acl"]) for r in traverse] == [("alice", {f"user:{alice.uid}": "--x"})]


def test_rerun_changes_nothing(account_db, target_root, people):  # noqa: F811
    deliver(target_root)
    hook = PosixAccessHook(AccessPolicy(account_db_root=str(account_db.root)))
    ctx = ctx_for(target_root)
    first_plan = hook.plan(ctx)
    assert first_plan
    hook.apply(ctx, first_plan, lambda r: None)
    before = {p: snapshot(p) for p in [target_root / "alice", *delivered_objects(target_root)]}
    assert hook.plan(ctx) == []
    again: list[dict] = []
    assert hook.apply(ctx, first_plan, again.append) == 0  # an old plan, applied twice
    assert again == []
    assert {p: snapshot(p) for p in before} == before
    lines: list[str] = []
    hook.dry_run(ctx, lines.append)
    assert "nothing to change" in lines[0]


def test_dry_run_prints_the_plan_and_changes_nothing(account_db, target_root, people):  # noqa: F811
    deliver(target_root)
    _alice, bob = people
    hook = PosixAccessHook(AccessPolicy(account_db_root=str(account_db.root)))
    lines: list[str] = []
    actions = hook.dry_run(ctx_for(target_root), lines.append)
    assert len(actions) > 0 and f"{len(actions)} access change(s)" in lines[0]
    assert "setfacl -m user:" in lines[0] and "chmod 0640" in lines[0]
    assert can_read(bob, target_root / FILES[0])


def test_group_grant_and_setgid_inbox(account_db, target_root, people):  # noqa: F811
    alice, bob = people
    carol = account_db.add_user("pccarol")
    team = account_db.add_group("pcteam")
    deliver(target_root)
    policy = AccessPolicy(account_db_root=str(account_db.root), acl_group="pcteam",
                          group="pcteam", setgid_inbox=True)
    hook = PosixAccessHook(policy)
    run_hook(hook, ctx_for(target_root))
    for path in delivered_objects(target_root):
        assert can_read(carol, path, extra_groups=(team,)), path
        assert not can_read(carol, path), path  # only through the group
        assert not can_read(bob, path), path
        assert path.stat().st_gid == team
    run_dir = target_root / DL / "INV-001/1/run-42"
    assert run_dir.stat().st_mode & 0o2000
    # a file written later (a repair) inherits the group and the default ACL
    old = os.umask(0o022)
    try:
        (run_dir / "late.dat").write_bytes(b"late")
    finally:
        os.umask(old)
    assert (run_dir / "late.dat").stat().st_gid == team
    assert can_read(alice, run_dir / "late.dat")
    assert can_read(carol, run_dir / "late.dat", extra_groups=(team,))
    assert not can_read(bob, run_dir / "late.dat")


def test_chown_to_the_user(account_db, target_root, people):  # noqa: F811
    alice, bob = people
    deliver(target_root)
    policy = AccessPolicy(account_db_root=str(account_db.root), chown_user=True, acl_user=False,
                          file_mode="0600", dir_mode="0700")
    records = run_hook(PosixAccessHook(policy), ctx_for(target_root))
    assert "set-owner" in {r["kind"] for r in records}
    for path in delivered_objects(target_root):
        assert path.stat().st_uid == alice.uid
        assert can_read(alice, path), path
        assert not can_read(bob, path), path
    assert getfacl(target_root / FILES[0]).count("user:") == 1  # no named entries


def test_revoke_undoes_the_grants(account_db, target_root, people):  # noqa: F811
    alice, _bob = people
    deliver(target_root)
    before = {p: snapshot(p) for p in [target_root / "alice", *delivered_objects(target_root)]}
    hook = PosixAccessHook(AccessPolicy(account_db_root=str(account_db.root)))
    ctx = ctx_for(target_root)
    records = run_hook(hook, ctx)
    assert can_read(alice, target_root / FILES[0])
    undone: list[dict] = []
    assert hook.revoke(ctx, records, undone.append) == len(records)
    assert {r["kind"] for r in undone} == {"revoke-acl", "restore-mode"}
    assert {p: snapshot(p) for p in before} == before
    assert all(f"user:{alice.uid}" not in getfacl(p) for p in before)  # traverse one too


def test_planted_symlinks_are_not_followed(account_db, target_root, people):  # noqa: F811
    deliver(target_root)
    outside = target_root.parent / (target_root.name + "-outside")
    outside.mkdir()
    try:
        secret = outside / "secret"
        secret.write_text("not yours")
        secret.chmod(0o600)
        before = {p: snapshot(p) for p in (outside, secret)}
        run_dir = target_root / DL / "INV-001/1/run-42"
        (run_dir / "evil.nxs").symlink_to(secret)
        (run_dir / "evil-dir").symlink_to(outside)
        hook = PosixAccessHook(AccessPolicy(account_db_root=str(account_db.root)))
        # a symlink among the delivered files, or as a directory on the way, is refused
        run_rel = f"{DL}/INV-001/1/run-42"
        for planted in (f"{run_rel}/evil.nxs", f"{run_rel}/evil-dir/secret"):
            with pytest.raises(UnsafeTargetObject) as err:
                run_hook(hook, ctx_for(target_root, files=(*FILES, planted)))
            assert err.value.download_id == 42 and planted.startswith(err.value.datafile)
        # a symlink that is not a delivered file is simply never looked at
        run_hook(hook, ctx_for(target_root))
        assert {p: snapshot(p) for p in before} == before
        # nor is a hard link to a file elsewhere handed over
        os.link(secret, run_dir / "hard.nxs")
        with pytest.raises(UnsafeTargetObject, match="hard links"):
            run_hook(hook, ctx_for(target_root, files=(*FILES, f"{DL}/INV-001/1/run-42/hard.nxs")))
        assert {p: snapshot(p) for p in before} == before
    finally:
        subprocess.run(["rm", "-rf", "--", str(outside)], check=True)


def test_paths_outside_the_root_are_refused(account_db, target_root, people):  # noqa: F811
    deliver(target_root)
    hook = PosixAccessHook(AccessPolicy(account_db_root=str(account_db.root)))
    for bad in ("../escape", "/etc/passwd", f"{DL}/../../x", ""):
        with pytest.raises(UnsafeTargetObject):
            hook.plan(ctx_for(target_root, files=(bad,)))
    with pytest.raises(UnsafeTargetObject, match="not inside the download directory"):
        hook.plan(ctx_for(target_root, files=("bob/other/file",)))


HOSTILE = ["alice;id", "$(id)", "`id`", "a b", "-rf", "../etc", "Alice", "", "a" * 33,
           "alice\n", "alice\x00", "al|ce"]


@pytest.mark.parametrize("name", HOSTILE)
@pytest.mark.parametrize("mode", ["existing", "create"])
def test_hostile_account_names_are_refused(account_db, target_root, name, mode):  # noqa: F811
    deliver(target_root)
    passwd = (account_db.root / "etc/passwd").read_text()
    hook = PosixAccessHook(AccessPolicy(accounts=mode, account_db_root=str(account_db.root)))
    with pytest.raises(InvalidAccountName) as err:
        run_hook(hook, ctx_for(target_root, account=name))
    assert err.value.download_id == 42
    assert (account_db.root / "etc/passwd").read_text() == passwd


@pytest.mark.parametrize("name", ["root", "daemon", "bin", "nobody", "sys"])
@pytest.mark.parametrize("mode", ["existing", "create"])
def test_system_accounts_are_refused(target_root, name, mode):  # noqa: F811
    """Resolved through this machine's NSS: the real system accounts."""
    if name not in ("root", "nobody"):  # reserved names are refused before any lookup
        try:
            pwd.getpwnam(name)
        except KeyError:  # never let `create` mode run useradd on this machine
            pytest.skip(f"no {name!r} account on this machine")
    deliver(target_root)
    hook = PosixAccessHook(AccessPolicy(accounts=mode))
    with pytest.raises(SystemAccountRefused):
        run_hook(hook, ctx_for(target_root, account=name))
    assert "user:" not in getfacl(target_root / FILES[0]).replace("user::", "")


def test_uid_range_is_configurable(account_db, target_root, people):  # noqa: F811
    alice, _ = people
    deliver(target_root)
    policy = AccessPolicy(account_db_root=str(account_db.root), min_uid=alice.uid + 1)
    with pytest.raises(SystemAccountRefused, match=str(alice.uid)):
        run_hook(PosixAccessHook(policy), ctx_for(target_root))


def test_missing_account_fails_or_holds(account_db, target_root):  # noqa: F811
    deliver(target_root)
    fail = PosixAccessHook(AccessPolicy(account_db_root=str(account_db.root)))
    with pytest.raises(AccountMissing) as err:
        fail.plan(ctx_for(target_root, account="pcghost"))
    assert isinstance(err.value, PermanentError) and "pcghost" in str(err.value)
    assert "download 42" in str(err.value)
    hold = PosixAccessHook(AccessPolicy(account_db_root=str(account_db.root), on_missing="hold"))
    with pytest.raises(AccountHold) as held:
        hold.plan(ctx_for(target_root, account="pcghost"))
    assert isinstance(held.value, TransientError) and held.value.alert


def test_create_mode_runs_useradd_confined(account_db, target_root, people):  # noqa: F811
    _alice, bob = people
    deliver(target_root)
    policy = AccessPolicy(accounts="create", account_db_root=str(account_db.root),
                          useradd_home="/srv/deliveries/{account}")
    hook = PosixAccessHook(policy)
    ctx = ctx_for(target_root, account="pcnew")
    plan = hook.plan(ctx)
    assert plan[0].kind is ActionKind.CREATE_ACCOUNT and plan[0].account == "pcnew"
    records: list[dict] = []
    hook.apply(ctx, plan, records.append)
    created = account_db.directory.user("pcnew")
    assert created is not None and 1000 <= created.uid <= 60000
    assert created.home == "/srv/deliveries/pcnew"
    assert "pcnew" not in Path("/etc/passwd").read_text()
    assert records[0]["kind"] == "create-account" and records[0]["uid"] == created.uid
    new_user = Person("pcnew", created.uid, created.gid)
    for path in delivered_objects(target_root):
        assert can_read(new_user, path), path
        assert not can_read(bob, path), path
    assert hook.plan(ctx) == []  # the account exists now: nothing more to do


def test_useradd_failure_is_a_clear_permanent_reason(tmp_path, target_root):  # noqa: F811
    deliver(target_root)
    broken = tmp_path / "no-db"
    broken.mkdir()  # no etc/passwd: useradd refuses
    hook = PosixAccessHook(AccessPolicy(accounts="create", account_db_root=str(broken)))
    with pytest.raises(AccountCreationFailed) as err:
        run_hook(hook, ctx_for(target_root, account="pcnew"))
    assert "useradd failed" in str(err.value) and "download 42" in str(err.value)


def test_no_accounts_mode_grants_a_group_only(account_db, target_root, people):  # noqa: F811
    alice, _bob = people
    staff = account_db.add_user("pcstaff")
    team = account_db.add_group("pcgroup")
    deliver(target_root)
    policy = AccessPolicy(accounts="none", acl_user=False, acl_group="pcgroup",
                          account_db_root=str(account_db.root))
    ctx = AccessContext(download_id=42, icat_user="simple/pcalice", account=None,
                        root=str(target_root), download_dir=DL, files=FILES)
    run_hook(PosixAccessHook(policy), ctx)
    for path in delivered_objects(target_root):
        assert can_read(staff, path, extra_groups=(team,)), path
        assert not can_read(alice, path), path


def test_create_mode_survives_losing_the_useradd_race(account_db, target_root):  # noqa: F811
    """Another worker created the account between our lookup and our useradd."""
    deliver(target_root)
    real = account_db.directory
    lookups = {"n": 0}

    class LateDirectory:
        def user(self, name):
            lookups["n"] += 1
            if lookups["n"] == 2:  # create_account's own check: pretend still missing...
                account_db.add_user(name)  # ...while the other worker creates it
                return None
            return real.user(name)

        def group(self, name):
            return real.group(name)

    policy = AccessPolicy(accounts="create", account_db_root=str(account_db.root))
    hook = PosixAccessHook(policy, directory=LateDirectory())
    records = run_hook(hook, ctx_for(target_root, account="pcrace"))
    assert "create-account" not in {r["kind"] for r in records}  # we did not create it
    assert real.user("pcrace") is not None
    assert hook.plan(ctx_for(target_root, account="pcrace")) == []


def test_create_mode_dry_run_then_chown_to_the_new_account(account_db, target_root):  # noqa: F811
    deliver(target_root)
    policy = AccessPolicy(accounts="create", account_db_root=str(account_db.root),
                          chown_user=True, acl_user=False, file_mode="0600", dir_mode="0700")
    hook = PosixAccessHook(policy)
    ctx = ctx_for(target_root, account="pcfresh")
    lines: list[str] = []
    plan = hook.dry_run(ctx, lines.append)
    assert "create account 'pcfresh'" in lines[0] and "pcfresh(new)" in lines[0]
    assert account_db.directory.user("pcfresh") is None  # the dry run created nothing
    hook.apply(ctx, plan, lambda r: None)
    created = account_db.directory.user("pcfresh")
    assert created is not None
    for path in delivered_objects(target_root):
        assert path.stat().st_uid == created.uid
        assert can_read(Person("pcfresh", created.uid, created.gid), path)
