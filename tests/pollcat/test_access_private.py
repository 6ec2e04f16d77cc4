"""Private from the first byte: nothing of a delivery is readable or listable by another account
at any moment, and only the access grant widens it (issue 20, points 1-3 and 10).

What pollcat creates on a target is owner-only whatever the umask: files 0600, the download's
directories 0700, the levels above it (`alice/`) 0711. The grant then gives the user `r--`/`r-x`
on her download and `r-x` on her own `alice/` (`--x` on shared levels). A refused or held grant
leaves the delivery private to pollcat's account; the policy's account limits are checked before
any byte is written. "Can read" is what the kernel allows a subprocess that dropped to the
other uid (tests/pollcat/test_access_fixtures.py), not what the mode bits suggest.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pollcat.states import OutcomeKind
from pollcat.targetfs import LocalTarget
from tests.conftest import scenario
from tests.pollcat.test_access_fixtures import (
    AccountDb,
    Person,
    account_db,  # noqa: F401  (fixture)
    can_read,
    getfacl,
    target_root,  # noqa: F401  (fixture)
)
from tests.support import delivered_files, pipeline_for, statuses, wait_for, wait_status

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="access tests run as root")

ALICE = {"user": "simple/alice", "transport": "globus", "file_name": "alice_run42",
         "email": "alice@example.org", "items": [{"investigation": "INV-001", "dataset": "run-42"}]}
DOWNLOAD = "alice/alice_run42"
README = f"{DOWNLOAD}/INV-001/1/run-42/notes/readme.txt"
SCAN = f"{DOWNLOAD}/INV-001/1/run-42/scan_0001.nxs"


# --- helpers ---------------------------------------------------------------------------------


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def everything(root: Path) -> list[Path]:
    """The root and every object below it (as root sees them)."""
    return [root, *sorted(root.rglob("*"))]


def assert_private(root: Path, *others: Person) -> None:
    """No object under `root` (the root included) can be read or listed by `others`."""
    objects = everything(root)
    assert len(objects) > 1, objects
    for person in others:
        readable = [p for p in objects if can_read(person, p)]
        assert not readable, (person.name, readable)


def assert_owner_only(root: Path, download: Path) -> None:
    """Modes as pollcat creates them: the root and the levels above the download 0711,
    the download's directories 0700, every file 0600; no ACL anywhere."""
    for path in everything(root):
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_file():
            assert mode == 0o600, (path, oct(mode))
        elif path == download or download in path.parents:
            assert mode == 0o700, (path, oct(mode))
        else:
            assert mode == 0o711, (path, oct(mode))
        assert not re.search(r"^(user|group):[0-9]+:", getfacl(path), re.M), path


def datafile_id(sim, name: str) -> int:
    return next(df.id for df in sim.store.datafiles.values() if df.name == name)


def stall_scan(sim, seconds: float = 5.0) -> None:
    """The big file's getData sends 64 KiB, then nothing for `seconds` (the client's read
    timeout is 10 s: the transfer waits, then completes)."""
    sim.add_fault(kind="stall", service="ids", endpoint="getData", count=1, seconds=seconds,
                  after_bytes=65536, params={"datafileIds": str(datafile_id(sim, "scan_0001.nxs"))})


@contextmanager
def sweeping(pipe) -> Iterator[dict]:
    """A sweep in a thread; its outcomes end up in the yielded dict's `out`."""
    box: dict = {}

    def run() -> None:
        try:
            box["out"] = pipe.sweep()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield box
    finally:
        thread.join(timeout=60)
        assert not thread.is_alive(), "the sweep did not end"
        assert "error" not in box, box["error"]


def set_passwd(db: AccountDb, name: str, uid: int | None) -> None:
    """Change `name`'s uid in the private account database (None: remove the account)."""
    passwd = db.root / "etc/passwd"
    rows = []
    for line in passwd.read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            if uid is None:
                continue
            fields[2] = str(uid)
        rows.append(":".join(fields))
    passwd.write_text("\n".join(rows) + "\n")


def getdata_calls(sim, counter: dict) -> int:
    """How often the counting fault `counter` (a zero latency on getData) matched."""
    (fault,) = [f for f in sim.facility.faults.list() if f["id"] == counter["id"]]
    return fault["hits"]


def pipeline(sim, tmp_path, root: Path, access: dict | None, **kw):
    return pipeline_for(sim, tmp_path, target_url=f"file://{root}", access=access, **kw)


# --- (a) while the transfer runs -------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o022, 0], ids=["umask022", "umask0"])
def test_nothing_is_readable_while_the_transfer_runs(make_sim, tmp_path, account_db,  # noqa: F811
                                                     target_root, mask):  # noqa: F811
    alice, bob = account_db.add_user("alice"), account_db.add_user("bob")
    sim = make_sim(scenario(downloads=[ALICE]))
    wait_status(sim.url, "RESTORING")
    stall_scan(sim)
    pipe = pipeline(sim, tmp_path, target_root, {"account_db_root": str(account_db.root)})
    root = target_root / "globus"
    with umask(mask), sweeping(pipe) as box:
        # the small file is verified and placed while the big one's stream is stalled
        wait_for(lambda: (root / README).is_file(), 10, "the first placed file")
        assert not (root / SCAN).exists()
        assert (root / README).read_bytes() == b"hello"  # pollcat's own account reads it
        for person in (bob, alice):  # not even the user before the grant
            assert not can_read(person, root / README)
            assert not can_read(person, root / DOWNLOAD)
            assert not can_read(person, root / "alice")
        assert_private(root, bob, alice)
        assert_owner_only(root, root / DOWNLOAD)
        assert "out" not in box  # all of it happened before the download was finished
    (out,) = box["out"]
    assert out.outcome == OutcomeKind.COMPLETED, out
    assert can_read(alice, root / README) and can_read(alice, root / SCAN)
    assert not can_read(bob, root / README) and not can_read(bob, root / "alice")


# --- (b) a refused grant ---------------------------------------------------------------------


@pytest.mark.parametrize("limit", ["min_uid", "max_uid", "missing"])
def test_a_refused_account_gets_no_byte_written(make_sim, tmp_path, account_db,  # noqa: F811
                                                target_root, limit):  # noqa: F811
    access: dict = {"account_db_root": str(account_db.root)}
    if limit != "missing":
        alice = account_db.add_user("alice")
        access.update({"min_uid": alice.uid + 1, "max_uid": 60000} if limit == "min_uid"
                      else {"min_uid": 1000, "max_uid": alice.uid - 1})
    sim = make_sim(scenario(downloads=[ALICE]))
    wait_status(sim.url, "RESTORING")
    counter = sim.add_fault(kind="latency", service="ids", endpoint="getData", seconds=0)
    pipe = pipeline(sim, tmp_path, target_root, access)
    (out,) = pipe.sweep()
    assert out.outcome == OutcomeKind.EXPIRED, out
    assert ("does not exist" if limit == "missing" else "outside the delivery range") \
        in out.reason
    assert statuses(sim.url) == {1: "EXPIRED"}
    # refused before the claim: not a directory, not a claim, not a part file
    assert list(target_root.rglob("*")) == []
    assert getdata_calls(sim, counter) == 0  # not a byte was even fetched


def test_a_grant_refused_after_the_transfer_leaves_the_data_private(
        make_sim, tmp_path, account_db, target_root):  # noqa: F811
    alice, bob = account_db.add_user("alice"), account_db.add_user("bob")
    sim = make_sim(scenario(downloads=[ALICE]))
    wait_status(sim.url, "RESTORING")
    stall_scan(sim, seconds=2)
    pipe = pipeline(sim, tmp_path, target_root, {"account_db_root": str(account_db.root)})
    root = target_root / "globus"
    with sweeping(pipe) as box:
        wait_for(lambda: (root / README).is_file(), 10, "the first placed file")
        set_passwd(account_db, "alice", 999)  # now a system uid: the grant refuses it
    (out,) = box["out"]
    assert out.outcome == OutcomeKind.EXPIRED and "outside the delivery range" in out.reason
    assert delivered_files(root)  # the data is on disk, and stays private
    assert_private(root, bob, alice)
    assert_owner_only(root, root / DOWNLOAD)


# --- (c) a held grant ------------------------------------------------------------------------


def test_a_held_account_gets_no_byte_written(make_sim, tmp_path, account_db,  # noqa: F811
                                             target_root):  # noqa: F811
    sim = make_sim(scenario(downloads=[ALICE]))
    wait_status(sim.url, "RESTORING")
    pipe = pipeline(sim, tmp_path, target_root,
                    {"account_db_root": str(account_db.root), "on_missing": "hold"})
    (out,) = pipe.sweep()
    assert out.outcome == OutcomeKind.RETRY and "held until it exists" in out.reason, out
    assert statuses(sim.url) == {1: "RESTORING"}
    assert list(target_root.rglob("*")) == []


def test_a_grant_held_after_the_transfer_leaves_the_data_private(
        make_sim, tmp_path, account_db, target_root):  # noqa: F811
    alice, bob = account_db.add_user("alice"), account_db.add_user("bob")
    sim = make_sim(scenario(downloads=[ALICE]))
    wait_status(sim.url, "RESTORING")
    stall_scan(sim, seconds=2)
    pipe = pipeline(sim, tmp_path, target_root,
                    {"account_db_root": str(account_db.root), "on_missing": "hold"})
    root = target_root / "globus"
    with sweeping(pipe) as box:
        wait_for(lambda: (root / README).is_file(), 10, "the first placed file")
        set_passwd(account_db, "alice", None)  # gone: the grant holds the download
    (out,) = box["out"]
    assert out.outcome == OutcomeKind.RETRY and "held until it exists" in out.reason, out
    assert statuses(sim.url) == {1: "RESTORING"}
    assert len(delivered_files(root)) == 2
    assert_private(root, bob, alice)
    assert_owner_only(root, root / DOWNLOAD)


# --- (d) after the grant ---------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["{user}/{download}/{investigation}/{visit}/{dataset}/"
                                    "{datafile}",
                                    "{facility}/{user}/{download}/{dataset}/{datafile}"],
                         ids=["user-first", "facility-level"])
def test_the_user_lists_her_own_directory_and_nobody_else_does(
        make_sim, tmp_path, account_db, target_root, layout):  # noqa: F811
    alice, bob = account_db.add_user("alice"), account_db.add_user("bob")
    sim = make_sim(scenario(downloads=[ALICE]))
    wait_status(sim.url, "RESTORING")
    pipe = pipeline(sim, tmp_path, target_root,
                    {"account_db_root": str(account_db.root), "retention_days": 15},
                    layout=layout)
    (out,) = pipe.sweep()
    assert out.outcome == OutcomeKind.COMPLETED, out
    root = target_root / "globus"
    shared = root / "LILS" if layout.startswith("{facility}") else None
    own = (shared or root) / "alice"
    download = own / "alice_run42"
    files = delivered_files(root)
    assert len(files) == 2
    assert can_read(alice, own)  # she lists her deliveries ...
    assert not can_read(bob, own) and not can_read(bob, root)  # ... nobody else does
    for path in [download, *download.rglob("*")]:
        if ".pollcat" in path.parts:
            continue
        assert can_read(alice, path), path
        assert not can_read(bob, path), path
    assert f"user:{alice.uid}:r-x" in getfacl(own)
    assert stat.S_IMODE(own.stat().st_mode) & 0o007 == 0o001  # others: pass, not list
    if shared is not None:  # a level shared by every user's downloads: she only passes it
        assert not can_read(alice, shared)
        assert f"user:{alice.uid}:--x" in getfacl(shared)
        assert stat.S_IMODE(shared.stat().st_mode) == 0o711 or "mask::--x" in getfacl(shared)

    # retention revokes the listing grant on her directory with her last delivery
    from pollcat.state import StateStore
    ledger = StateStore(tmp_path / "state", "LILS")
    ledger.update(1, delivered_at="2000-01-01T00:00:00+00:00")
    assert pipe.cleanup(out=lambda _line: None) == 0
    assert not delivered_files(root)
    if own.exists():
        assert f"user:{alice.uid}:" not in getfacl(own)
        assert not can_read(alice, own)


# --- (e) modes do not depend on the umask ----------------------------------------------------


@pytest.mark.parametrize("mask", [0, 0o002, 0o077], ids=["umask0", "umask002", "umask077"])
def test_without_a_policy_the_delivery_stays_private_to_pollcat(
        make_sim, tmp_path, account_db, target_root, mask):  # noqa: F811
    alice, bob = account_db.add_user("alice"), account_db.add_user("bob")
    sim = make_sim(scenario(downloads=[ALICE]))
    wait_status(sim.url, "RESTORING")
    pipe = pipeline(sim, tmp_path, target_root, None)
    with umask(mask):
        (out,) = pipe.sweep()
    assert out.outcome == OutcomeKind.COMPLETED, out
    root = target_root / "globus"
    assert len(delivered_files(root)) == 2
    assert_owner_only(root, root / DOWNLOAD)
    assert_private(root, bob, alice)


@pytest.mark.parametrize("mask", [0, 0o022, 0o277], ids=["umask0", "umask022", "umask277"])
def test_the_local_target_creates_owner_only_whatever_the_umask(tmp_path, mask):
    root = tmp_path / "root"
    target = LocalTarget(str(root))
    target.traverse_depth = 2  # `{facility}/{user}/{download}/...`
    with umask(mask):
        target.make_dirs("LILS/alice/run/sub")
        target.make_private_dir("LILS/alice/run/.pollcat")
        with target.create("LILS/alice/run/.pollcat/a.part") as f:
            f.write(b"x")
        target.place("LILS/alice/run/.pollcat/a.part", "LILS/alice/run/new/a")
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode)
             for p in everything(root)}
    assert modes == {"root": 0o711, "root/LILS": 0o711, "root/LILS/alice": 0o711,
                     "root/LILS/alice/run": 0o700, "root/LILS/alice/run/sub": 0o700,
                     "root/LILS/alice/run/.pollcat": 0o700, "root/LILS/alice/run/new": 0o700,
                     "root/LILS/alice/run/new/a": 0o600}, {k: oct(v) for k, v in modes.items()}


def test_directories_pollcat_did_not_make_keep_their_modes(tmp_path):
    """An operator's existing root and levels are theirs: only what pollcat makes is set."""
    (tmp_path / "root/alice").mkdir(parents=True)
    (tmp_path / "root").chmod(0o755)
    (tmp_path / "root/alice").chmod(0o750)
    target = LocalTarget(str(tmp_path / "root"))
    target.traverse_depth = 1
    target.make_dirs("alice/run")
    assert stat.S_IMODE((tmp_path / "root").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "root/alice").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "root/alice/run").stat().st_mode) == 0o700


# --- SFTP targets ----------------------------------------------------------------------------


@pytest.fixture
def sftp_umask0():
    """A real sshd whose SFTP server creates with umask 0 (`internal-sftp -u 000`): whatever
    is owner-only below is so because pollcat set it."""
    pytest.importorskip("sshfs", reason="SFTP targets need the [sftp] extra (sshfs)")
    from tests.sshd import running_sshd

    with running_sshd(sftp_flags=("-u", "000")) as server:
        yield server


@pytest.mark.sshd
def test_the_sftp_target_creates_owner_only_whatever_the_servers_umask(tmp_path, sftp_umask0):
    from pollcat.config import TargetConfig
    from pollcat.delivery import open_download_target

    root = tmp_path / "sftp-root"
    target = TargetConfig(url=sftp_umask0.url(root), storage_options=sftp_umask0.storage_options(),
                          layout="{facility}/{user}/{download}/{dataset}/{datafile}")
    _fs, _root, tfs = open_download_target(target)
    assert tfs.traverse_depth == 2
    tfs.make_dirs("LILS/alice/run/sub")
    tfs.make_private_dir("LILS/alice/run/.pollcat")
    with tfs.create("LILS/alice/run/.pollcat/a.part") as f:
        f.write(b"x")
    tfs.place("LILS/alice/run/.pollcat/a.part", "LILS/alice/run/new/a")
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode)
             for p in everything(root)}
    assert modes == {"sftp-root": 0o711, "sftp-root/LILS": 0o711, "sftp-root/LILS/alice": 0o711,
                     "sftp-root/LILS/alice/run": 0o700, "sftp-root/LILS/alice/run/sub": 0o700,
                     "sftp-root/LILS/alice/run/.pollcat": 0o700,
                     "sftp-root/LILS/alice/run/new": 0o700,
                     "sftp-root/LILS/alice/run/new/a": 0o600}, {k: oct(v) for k, v in modes.items()}


@pytest.mark.sshd
def test_an_sftp_delivery_is_private_to_pollcat(make_sim, tmp_path, account_db,  # noqa: F811
                                                sftp_umask0):
    alice, bob = account_db.add_user("alice"), account_db.add_user("bob")
    sim = make_sim(scenario(downloads=[ALICE]))
    wait_status(sim.url, "RESTORING")
    base = Path(tempfile.mkdtemp(prefix="pollcat-sftp-", dir="/tmp"))
    base.chmod(0o711)
    try:
        pipe = pipeline_for(sim, tmp_path, target_url=sftp_umask0.url(base),
                            storage_options=sftp_umask0.storage_options())
        (out,) = pipe.sweep()
        assert out.outcome == OutcomeKind.COMPLETED, out
        root = base / "globus"
        assert len(delivered_files(root)) == 2
        assert_owner_only(root, root / DOWNLOAD)
        assert_private(root, bob, alice)
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- the layout's account check and the user's own directories -------------------------------


def test_a_policy_uid_range_replaces_the_default_one_for_derived_names(monkeypatch):
    from types import SimpleNamespace

    from pollcat import layout
    from pollcat.errors import InvalidUserName

    monkeypatch.setattr(layout.pwd, "getpwnam", lambda name: SimpleNamespace(pw_uid=1500))
    assert not layout.is_system_account("carol")  # no policy: below 1000 only
    assert layout.is_system_account("carol", (2000, 60000))
    assert layout.is_system_account("carol", (1000, 1400))
    assert not layout.is_system_account("carol", (1000, 60000))
    assert layout.is_system_account("root", (0, 60000))  # a system name whatever its uid
    with pytest.raises(InvalidUserName, match="system account"):
        layout.map_user("simple/carol", uid_range=(2000, 60000))
    assert layout.map_user("simple/carol", uid_range=(1000, 60000)) == "carol"


def test_the_target_account_uses_the_targets_policy(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from pollcat import layout
    from pollcat.config import TargetConfig
    from pollcat.errors import InvalidUserName
    from pollcat.grants import target_account

    monkeypatch.setattr(layout.pwd, "getpwnam", lambda name: SimpleNamespace(pw_uid=1500))
    d = SimpleNamespace(user_name="simple/carol")
    url = f"file://{tmp_path}"
    assert target_account(d, TargetConfig(url=url)) == "carol"
    with pytest.raises(InvalidUserName):
        target_account(d, TargetConfig(url=url, access={"min_uid": 2000}))
    # with its own account database the policy's check of the resolved account decides
    assert target_account(d, TargetConfig(url=url, access={"min_uid": 2000,
                                                           "account_db_root": "/x"})) == "carol"


@pytest.mark.parametrize(("layout", "download_dir", "shared", "own"), [
    ("{user}/{download}/{datafile}", "alice/run", 1, ("alice",)),
    ("{facility}/{user}/{download}/{datafile}", "LILS/alice/run", 2, ("LILS/alice",)),
    ("{user}/{transport}/{download}/{datafile}", "alice/globus/run", 2,
     ("alice", "alice/globus")),
    ("{facility}/{download}_{user}/{datafile}", "LILS/run_alice", 1, ()),
    ("{download}/{datafile}", "run", 0, ()),
])
def test_the_users_own_directories_come_from_the_layout(layout, download_dir, shared, own):
    from pollcat.layout import shared_levels, user_dirs

    assert shared_levels(layout) == shared
    assert user_dirs(layout, download_dir) == own


def test_the_hook_lets_the_user_list_her_own_directory_only(account_db,  # noqa: F811
                                                            target_root):  # noqa: F811
    from pollcat.access import AccessContext, AccessPolicy, PosixAccessHook

    alice, bob = account_db.add_user("alice"), account_db.add_user("bob")
    team = account_db.add_group("team")
    files = ("LILS/alice/run/a.dat",)
    for rel, mode in (("LILS", 0o711), ("LILS/alice", 0o711), ("LILS/alice/run", 0o700)):
        (target_root / rel).mkdir()
        (target_root / rel).chmod(mode)
    (target_root / files[0]).write_bytes(b"a")
    (target_root / files[0]).chmod(0o600)
    hook = PosixAccessHook(AccessPolicy(account_db_root=str(account_db.root), acl_group="team"))
    ctx = AccessContext(download_id=7, icat_user="simple/alice", account="alice",
                        root=str(target_root), download_dir="LILS/alice/run", files=files,
                        user_dirs=("LILS/alice",))
    records: list[dict] = []
    hook.apply(ctx, hook.plan(ctx), records.append)
    own, shared = getfacl(target_root / "LILS/alice"), getfacl(target_root / "LILS")
    assert f"user:{alice.uid}:r-x" in own and f"group:{team}:--x" in own
    assert f"user:{alice.uid}:--x" in shared and f"group:{team}:--x" in shared
    assert "default:" not in own and "default:" not in shared
    assert can_read(alice, target_root / "LILS/alice") and can_read(alice, target_root / files[0])
    assert not can_read(alice, target_root / "LILS")
    assert not can_read(bob, target_root / "LILS/alice")
    assert not can_read(bob, target_root / "LILS/alice", extra_groups=(team,))
    traverse = [r for r in records if r["scope"] == "traverse"]
    assert {r["path"] for r in traverse} == {"LILS", "LILS/alice"}
    assert not hook.plan(ctx)  # a rerun changes nothing
    # revoking the recorded grants (as retention does with her last delivery) removes them
    hook.revoke(ctx, records)
    assert f"user:{alice.uid}:" not in getfacl(target_root / "LILS/alice")
    assert not can_read(alice, target_root / "LILS/alice")


def test_an_older_traverse_grant_becomes_a_listing_grant_and_both_revoke(
        account_db, target_root):  # noqa: F811
    """`alice/` granted `--x` by a delivery before this change: the next one widens it to
    `r-x` (recording the `--x` it found), and revoking both, newest first, leaves nothing."""
    from pollcat.access import AccessContext, AccessPolicy, PosixAccessHook

    alice = account_db.add_user("alice")
    hook = PosixAccessHook(AccessPolicy(account_db_root=str(account_db.root)))
    records: list[dict] = []
    for n, user_dirs in ((1, ()), (2, ("alice",))):
        rel = f"alice/run{n}/a.dat"
        (target_root / rel).parent.mkdir(parents=True, exist_ok=True)
        (target_root / rel).write_bytes(b"a")
        ctx = AccessContext(download_id=n, icat_user="simple/alice", account="alice",
                            root=str(target_root), download_dir=f"alice/run{n}", files=(rel,),
                            user_dirs=user_dirs)
        hook.apply(ctx, hook.plan(ctx), records.append)
        perms = "--x" if n == 1 else "r-x"
        assert f"user:{alice.uid}:{perms}" in getfacl(target_root / "alice")
    traverse = [r for r in records if r["scope"] == "traverse"]
    assert len(traverse) == 2
    hook.revoke(ctx, traverse)
    assert f"user:{alice.uid}:" not in getfacl(target_root / "alice")


# --- the SSH helper of SFTP targets ----------------------------------------------------------


def _helper_fixtures():
    pytest.importorskip("sshfs", reason="SFTP targets need the [sftp] extra (sshfs)")
    from tests.pollcat import test_access_sftp

    return test_access_sftp


@pytest.fixture
def helper_server(account_db, target_root):  # noqa: F811
    """An sshd whose key runs the helper (as in test_access_sftp); `.helper` is its path."""
    sftp_tests = _helper_fixtures()
    from tests.sshd import running_sshd

    with running_sshd() as server:
        keys = server.dir / "authorized_keys" / server.user

        def use(helper: Path) -> None:
            line = sftp_tests.forced_command_line(server, target_root,
                                                  account_db.root / "etc/passwd")
            keys.write_text(line.replace(str(sftp_tests.HELPER), str(helper)))

        use(sftp_tests.HELPER)
        server.use_helper = use  # type: ignore[attr-defined]
        yield server


def _helper_tree(root: Path) -> tuple[str, ...]:
    files = ("LILS/alice/run/a.dat",)
    for rel, mode in (("LILS", 0o711), ("LILS/alice", 0o711), ("LILS/alice/run", 0o700)):
        (root / rel).mkdir()
        (root / rel).chmod(mode)
    (root / files[0]).write_bytes(b"a")
    (root / files[0]).chmod(0o600)
    return files


@pytest.mark.sshd
def test_the_helper_lets_the_user_list_her_own_directory_only(account_db, target_root,  # noqa: F811
                                                               helper_server):
    from pollcat.access import AccessContext, AccessPolicy
    from pollcat.access.sftp import SshHelperHook

    sftp_tests = _helper_fixtures()
    alice, bob = account_db.add_user("alice"), account_db.add_user("bob")
    files = _helper_tree(target_root)
    hook = SshHelperHook(AccessPolicy(), sftp_tests.helper_target(helper_server))
    ctx = AccessContext(download_id=7, icat_user="simple/alice", account="alice",
                        root=str(target_root), download_dir="LILS/alice/run", files=files,
                        user_dirs=("LILS/alice",))
    records: list[dict] = []
    hook.apply(ctx, hook.plan(ctx), records.append)
    assert f"user:{alice.uid}:r-x" in getfacl(target_root / "LILS/alice")
    assert f"user:{alice.uid}:--x" in getfacl(target_root / "LILS")
    assert can_read(alice, target_root / "LILS/alice") and can_read(alice, target_root / files[0])
    assert not can_read(alice, target_root / "LILS")
    assert not can_read(bob, target_root / "LILS/alice") and not can_read(bob,
                                                                          target_root / files[0])
    assert hook.plan(ctx) == []


@pytest.mark.sshd
@pytest.mark.parametrize("command", ["grant 7 alice LILS/alice/run own=x",
                                     "grant 7 alice LILS/alice/run own=2",
                                     "grant 7 alice LILS/alice/run own=0 own=0",
                                     "revoke 7 alice LILS/alice/run own=0"])
def test_the_helper_refuses_a_bad_own_word(account_db, target_root, helper_server,  # noqa: F811
                                           command):
    sftp_tests = _helper_fixtures()
    account_db.add_user("alice")
    _helper_tree(target_root)
    before = getfacl(target_root / "LILS/alice")
    proc = sftp_tests.raw_ssh(helper_server, command)
    assert proc.returncode == 2 and "refused" in proc.stderr, (proc.stdout, proc.stderr)
    assert getfacl(target_root / "LILS/alice") == before


@pytest.mark.sshd
def test_an_older_helper_still_grants_the_delivery(account_db, target_root, helper_server,  # noqa: F811
                                                   tmp_path, caplog):
    """A helper from before `own=N` refuses the word (as any 5-word request): pollcat asks
    again without it, and the user reaches (not lists) her directory, as before."""
    from pollcat.access import AccessContext, AccessPolicy
    from pollcat.access.sftp import SshHelperHook

    sftp_tests = _helper_fixtures()
    old = tmp_path / "old-helper"
    text = sftp_tests.HELPER.read_text()
    accepts_own = 'if len(words) == 5 and words[0] in ("plan", "grant"):'
    assert accepts_own in text
    old.write_text(text.replace(accepts_own, "if False:"))
    helper_server.use_helper(old)
    alice = account_db.add_user("alice")
    files = _helper_tree(target_root)
    hook = SshHelperHook(AccessPolicy(), sftp_tests.helper_target(helper_server))
    ctx = AccessContext(download_id=7, icat_user="simple/alice", account="alice",
                        root=str(target_root), download_dir="LILS/alice/run", files=files,
                        user_dirs=("LILS/alice",))
    hook.apply(ctx, hook.plan(ctx), lambda _record: None)
    assert can_read(alice, target_root / files[0])
    assert f"user:{alice.uid}:--x" in getfacl(target_root / "LILS/alice")
    assert "older helper" in caplog.text
