"""Resolving, and in the legacy `create` mode creating, the account a delivery belongs to.

Names are checked twice (delivery-research.md §2.3): against ACCOUNT_NAME_RE before anything
else sees them, then by resolving them, and refusing the result when it is a system account
(root, or a uid outside the policy's range). `useradd` is run only in `create` mode, only for a
name that passed both checks and does not exist, with an argument list (PollCAT ran a shell
string). Accounts are never deleted: an account may own more than pollcat's deliveries.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass
from typing import Protocol

from pollcat.access.errors import (
    AccountCreationFailed,
    AccountHold,
    AccountMissing,
    GroupMissing,
    InvalidAccountName,
    SystemAccountRefused,
)
from pollcat.access.policy import AccessPolicy, AccountsMode, OnMissing
from pollcat.access.tools import find_tool, run_tool
from pollcat.layout import ACCOUNT_NAME_RE

#: Refused whatever their uid says (root's name may be aliased to another uid on odd systems).
RESERVED_NAMES = frozenset({"root", "toor", "nobody", "nogroup"})


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class Group:
    name: str
    gid: int


class AccountDirectory(Protocol):
    """Where account and group names are looked up."""

    def user(self, name: str) -> Account | None: ...

    def group(self, name: str) -> Group | None: ...


class NssDirectory:
    """This machine's accounts through NSS (files, SSSD, LDAP, FreeIPA: whatever it uses)."""

    def user(self, name: str) -> Account | None:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            return None
        return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)

    def group(self, name: str) -> Group | None:
        try:
            entry = grp.getgrnam(name)
        except KeyError:
            return None
        return Group(entry.gr_name, entry.gr_gid)


class PasswdFilesDirectory:
    """The account database under another root (`<root>/etc/passwd`, `<root>/etc/group`),
    the one `useradd --prefix <root>` writes: e.g. an SFTP container's accounts volume."""

    def __init__(self, root: str):
        self.root = root

    def _rows(self, name: str) -> list[list[str]]:
        try:
            with open(os.path.join(self.root, "etc", name), encoding="utf-8") as f:
                return [line.rstrip("\n").split(":") for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def user(self, name: str) -> Account | None:
        for row in self._rows("passwd"):
            if len(row) >= 7 and row[0] == name:
                return Account(row[0], int(row[2]), int(row[3]), row[5])
        return None

    def group(self, name: str) -> Group | None:
        for row in self._rows("group"):
            if len(row) >= 3 and row[0] == name:
                return Group(row[0], int(row[2]))
        return None


def directory_for(policy: AccessPolicy) -> AccountDirectory:
    if policy.account_db_root is None:
        return NssDirectory()
    return PasswdFilesDirectory(policy.account_db_root)


def check_account_name(name: object, *, download_id: int | None = None) -> str:
    """`name` if it may be a delivery account's name; InvalidAccountName/SystemAccountRefused."""
    if not isinstance(name, str) or not ACCOUNT_NAME_RE.fullmatch(name):
        raise InvalidAccountName(
            f"account name {name!r} is not valid (must match {ACCOUNT_NAME_RE.pattern})",
            download_id=download_id)
    if name in RESERVED_NAMES:
        raise SystemAccountRefused(f"account {name!r} is a system account and is never a "
                                   "delivery account", download_id=download_id)
    return name


def check_uid(account: Account, policy: AccessPolicy, *, download_id: int | None = None) -> None:
    if not policy.min_uid <= account.uid <= policy.max_uid:
        raise SystemAccountRefused(
            f"account {account.name!r} has uid {account.uid}, outside the delivery range "
            f"{policy.min_uid}-{policy.max_uid} (a system account)", download_id=download_id)


def resolve_account(policy: AccessPolicy, directory: AccountDirectory, name: str, *,
                    download_id: int | None = None) -> Account | None:
    """The checked account, or None when it is missing and `create` mode will create it.

    A missing account in `existing` mode raises AccountMissing (`on_missing: fail`) or
    AccountHold (`hold`).
    """
    check_account_name(name, download_id=download_id)
    account = directory.user(name)
    if account is not None:
        check_uid(account, policy, download_id=download_id)
        return account
    if policy.accounts is AccountsMode.CREATE:
        return None
    message = (f"account {name!r} does not exist on this target; create it, map the ICAT user "
               "to an existing account, or use accounts: create")
    if policy.on_missing is OnMissing.HOLD:
        raise AccountHold(message + " (held until it exists)", download_id=download_id)
    raise AccountMissing(message, download_id=download_id)


def resolve_group(directory: AccountDirectory, name: str, *,
                  download_id: int | None = None) -> Group:
    group = directory.group(name)
    if group is None:
        raise GroupMissing(f"group {name!r} of the access policy does not exist",
                           download_id=download_id)
    return group


def useradd_argv(policy: AccessPolicy, name: str, useradd: str = "useradd") -> list[str]:
    """The `useradd` argument list for `name` (already checked); never a shell string.

    UID_MIN/UID_MAX pin the new uid inside the policy's range; no home directory is created
    (the delivery target is where the data goes).
    """
    argv = [useradd]
    if policy.account_db_root is not None:
        argv += ["--prefix", policy.account_db_root]
    argv += ["--home-dir", policy.useradd_home.format(account=name),
             "--shell", policy.useradd_shell, "--no-create-home", "--user-group",
             "--key", f"UID_MIN={policy.min_uid}", "--key", f"UID_MAX={policy.max_uid}",
             "--key", f"GID_MIN={policy.min_uid}", "--key", f"GID_MAX={policy.max_uid}",
             "--", name]
    return argv


def create_account(policy: AccessPolicy, directory: AccountDirectory, name: str, *,
                   download_id: int | None = None) -> tuple[Account, bool]:
    """Run useradd for `name` if it is missing (create mode only).

    Returns the checked account and whether it was created now.
    """
    if policy.accounts is not AccountsMode.CREATE:
        raise AccountCreationFailed(
            f"refusing to create account {name!r}: accounts mode is {policy.accounts.value!r}",
            download_id=download_id)
    check_account_name(name, download_id=download_id)
    existing = directory.user(name)
    created = existing is None
    if existing is None:
        tool = find_tool("useradd", AccountCreationFailed, download_id=download_id)
        try:
            run_tool(useradd_argv(policy, name, tool), error=AccountCreationFailed,
                     timeout=policy.tool_timeout, download_id=download_id)
        except AccountCreationFailed:
            # another worker delivering to the same new user may have won the race
            existing = directory.user(name)
            if existing is None:
                raise
            created = False
        existing = directory.user(name)
        if existing is None:
            raise AccountCreationFailed(
                f"useradd succeeded but account {name!r} cannot be resolved afterwards",
                download_id=download_id)
    check_uid(existing, policy, download_id=download_id)
    return existing, created
