"""Test users, a confined account database and "read as" helpers for the access tests.

Test accounts are created with the real `useradd --prefix <tmp>` in a private account database
(`<tmp>/etc/passwd`), never in the machine's own; the hook resolves them there through
`account_db_root`. Reading "as a user" runs /bin/cat or /bin/ls in a subprocess that has
dropped to the user's uid, gid and supplementary groups, so what is proved is what the kernel
allows, not what the mode bits suggest. The tests at the bottom prove the helpers can fail.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pollcat.access.accounts import PasswdFilesDirectory

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="access tests run as root")

NEEDED_TOOLS = ("setfacl", "getfacl", "useradd", "groupadd")


def require_tools() -> None:
    missing = [t for t in NEEDED_TOOLS if shutil.which(t, path="/usr/sbin:/usr/bin") is None]
    if missing:
        pytest.skip(f"missing {missing} (apt-get install acl passwd)")


@dataclass(frozen=True)
class Person:
    name: str
    uid: int
    gid: int


class AccountDb:
    """A private account database under `root`, written by the real useradd/groupadd."""

    def __init__(self, root: Path):
        self.root = root
        etc = root / "etc"
        etc.mkdir(parents=True)
        for name in ("passwd", "shadow", "group", "gshadow"):
            (etc / name).touch()
        (etc / "shadow").chmod(0o600)
        if Path("/etc/login.defs").exists():
            shutil.copyfile("/etc/login.defs", etc / "login.defs")
        self._next = random.randrange(40000, 55000, 100)

    def next_id(self) -> int:
        self._next += 1
        return self._next

    def add_group(self, name: str) -> int:
        gid = self.next_id()
        subprocess.run(["groupadd", "--prefix", str(self.root), "-g", str(gid), name],
                       check=True, capture_output=True, timeout=30)
        return gid

    def add_user(self, name: str) -> Person:
        uid = self.next_id()
        gid = self.add_group(name)
        subprocess.run(["useradd", "--prefix", str(self.root), "-M", "-u", str(uid),
                        "-g", str(gid), "-s", "/usr/sbin/nologin", "-d", "/nonexistent", name],
                       check=True, capture_output=True, timeout=30)
        return Person(name, uid, gid)

    @property
    def directory(self) -> PasswdFilesDirectory:
        return PasswdFilesDirectory(str(self.root))


@pytest.fixture
def account_db(tmp_path) -> AccountDb:
    require_tools()
    return AccountDb(tmp_path / "accounts")


@pytest.fixture
def target_root() -> Iterator[Path]:
    """A target root test users can traverse (pytest's tmp_path is 0700 root)."""
    root = Path(tempfile.mkdtemp(prefix="pollcat-access-", dir="/tmp"))
    root.chmod(0o711)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _as(user: Person, argv: list[str], extra_groups: tuple[int, ...] = ()) -> bool:
    proc = subprocess.run(argv, user=user.uid, group=user.gid, extra_groups=list(extra_groups),
                          capture_output=True, timeout=30, cwd="/", env={"PATH": "/usr/bin:/bin"})
    return proc.returncode == 0


def can_read(user: Person, path: Path, extra_groups: tuple[int, ...] = ()) -> bool:
    """Whether `user` can read the file, or list the directory, at `path`."""
    argv = ["/bin/ls", "-a", "--", str(path)] if path.is_dir() else ["/bin/cat", "--", str(path)]
    return _as(user, argv, extra_groups)


def can_traverse(user: Person, path: Path) -> bool:
    return _as(user, ["/usr/bin/test", "-e", str(path / ".")])


def getfacl(path: Path) -> str:
    return subprocess.run(["getfacl", "--numeric", "--absolute-names", "-P", "--", str(path)],
                          check=True, capture_output=True, text=True, timeout=30).stdout


def snapshot(path: Path) -> tuple[int, int, int, str]:
    """Owner, group, mode and ACL text of `path` (not followed)."""
    st = os.lstat(path)
    return st.st_uid, st.st_gid, st.st_mode, getfacl(path) if not path.is_symlink() else ""


# --- the helpers themselves can fail ---------------------------------------------------------


def test_can_read_is_refused_without_permission(account_db, target_root):
    user = account_db.add_user("pcfixa")
    private = target_root / "private.txt"
    private.write_text("secret")
    private.chmod(0o600)
    assert not can_read(user, private)
    private.chmod(0o644)
    assert can_read(user, private)
    assert "pcfixa" in (account_db.root / "etc/passwd").read_text()
    assert "pcfixa" not in Path("/etc/passwd").read_text()
