"""The access policy of a target: which account a delivery belongs to and who may read it.

One frozen, validated value per target, so a wrong setting is refused when the configuration is
loaded, not half-way through granting. The defaults are the safe choice of
delivery-research.md §2.3: resolve accounts that already exist (NSS), keep the files owned by
the service, give the user read access through a POSIX ACL, and nobody else anything.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

from pollcat.errors import ConfigurationError
from pollcat.layout import ACCOUNT_NAME_RE


class AccountsMode(StrEnum):
    """Where the delivery's account comes from."""

    EXISTING = "existing"  # resolve through NSS (or the configured account database)
    CREATE = "create"      # legacy PollCAT behaviour: useradd when missing (explicit opt-in)
    NONE = "none"          # no OS accounts on this target (object stores, Globus...)


class OnMissing(StrEnum):
    """What a missing account does to the download."""

    FAIL = "fail"  # permanent: the download fails with a clear reason
    HOLD = "hold"  # transient: retried, and an operator alert is raised


PERMISSION_BITS = 0o777


def _parse_mode(name: str, value: Any) -> int:
    """A mode from an int or an octal string ("0640", "640", "0o640")."""
    if isinstance(value, bool):
        raise ConfigurationError(f"access policy {name} must be an octal mode, got {value!r}")
    if isinstance(value, str):
        text = value.strip().lower().removeprefix("0o")
        try:
            value = int(text, 8)
        except ValueError as exc:
            raise ConfigurationError(
                f"access policy {name} {value!r} is not an octal mode") from exc
    if not isinstance(value, int) or not 0 <= value <= PERMISSION_BITS:
        raise ConfigurationError(
            f"access policy {name} must be between 0 and 0o777 (setgid comes from "
            f"setgid_inbox), got {value!r}")
    return value


def _check_group_name(name: str, value: str | None) -> None:
    if value is not None and not ACCOUNT_NAME_RE.fullmatch(value):
        raise ConfigurationError(
            f"access policy {name} {value!r} is not a valid group name "
            f"(must match {ACCOUNT_NAME_RE.pattern})")


@dataclass(frozen=True)
class AccessPolicy:
    """How a target's deliveries are given to their users (validated on construction).

    Enum and mode fields also accept their text forms ("create", "0640"), so a block or a
    command-line flag can be passed straight in (see `from_mapping`).
    """

    accounts: AccountsMode = AccountsMode.EXISTING
    on_missing: OnMissing = OnMissing.FAIL
    #: Accounts with a uid outside [min_uid, max_uid] are system accounts (root, daemons,
    #: `nobody` = 65534) and are refused.
    min_uid: int = 1000
    max_uid: int = 60000
    #: None: this machine's accounts through NSS (pwd/grp: files, SSSD, LDAP). A path: the
    #: account database under that root (`<root>/etc/passwd`, `/etc/group`), e.g. the volume
    #: an SFTP container's accounts live in; `useradd` then gets `--prefix <root>`.
    account_db_root: str | None = None
    #: `create` mode only: home directory (`{account}` is replaced) and login shell.
    useradd_home: str = "/home/{account}"
    useradd_shell: str = "/usr/sbin/nologin"
    #: Owner and group of delivered files and directories. `chown_user` gives them to the
    #: user; `group` sets their group (e.g. the investigation's or a facility group).
    chown_user: bool = False
    group: str | None = None
    file_mode: int = 0o640
    dir_mode: int = 0o750
    #: POSIX ACLs: read for the user (r on files, r-x on directories) and optionally a
    #: group; `default_acl` adds the same as default entries on the download's directories so
    #: files written later (a rerun, a repair) inherit them.
    acl_user: bool = True
    acl_group: str | None = None
    default_acl: bool = True
    #: Set the setgid bit on the download's directories (needs `group`): files written later
    #: get that group.
    setgid_inbox: bool = False
    #: Deliveries older than this are removed by `cleanup`; 0 keeps them forever.
    retention_days: int = 0
    #: Seconds an external tool (setfacl, getfacl, useradd) may take.
    tool_timeout: float = 60.0

    def __post_init__(self) -> None:
        for name, enum in (("accounts", AccountsMode), ("on_missing", OnMissing)):
            try:
                object.__setattr__(self, name, enum(getattr(self, name)))
            except ValueError as exc:
                raise ConfigurationError(
                    f"access policy {name} {getattr(self, name)!r} is not one of "
                    f"{', '.join(e.value for e in enum)}") from exc
        object.__setattr__(self, "file_mode", _parse_mode("file_mode", self.file_mode))
        object.__setattr__(self, "dir_mode", _parse_mode("dir_mode", self.dir_mode))
        self._check_accounts()
        self._check_permissions()
        if isinstance(self.retention_days, bool) or not isinstance(self.retention_days, int) \
                or self.retention_days < 0:
            raise ConfigurationError(
                f"access policy retention_days must be a whole number >= 0 (0 = keep "
                f"forever), got {self.retention_days!r}")
        if not self.tool_timeout > 0:
            raise ConfigurationError("access policy tool_timeout must be positive")

    def _check_accounts(self) -> None:
        for name in ("min_uid", "max_uid"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigurationError(f"access policy {name} must be an integer")
        if self.min_uid < 1:
            raise ConfigurationError("access policy min_uid must be at least 1 (root is never "
                                     "a delivery account)")
        if self.max_uid < self.min_uid:
            raise ConfigurationError("access policy max_uid is below min_uid")
        if self.account_db_root is not None and not self.account_db_root.startswith("/"):
            raise ConfigurationError(
                f"access policy account_db_root must be absolute, got {self.account_db_root!r}")
        if not self.useradd_home.startswith("/") or not self.useradd_shell.startswith("/"):
            raise ConfigurationError("access policy useradd_home and useradd_shell must be "
                                     "absolute paths")
        for value in (self.useradd_home, self.useradd_shell):
            if ":" in value or any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
                raise ConfigurationError(
                    f"access policy: {value!r} may not contain ':' or control characters "
                    "(they would corrupt /etc/passwd)")
        try:
            used = {name for _l, name, _s, _c in string.Formatter().parse(self.useradd_home)
                    if name is not None}
        except ValueError as exc:
            raise ConfigurationError(f"access policy useradd_home: {exc}") from exc
        if used - {"account"}:
            raise ConfigurationError(
                f"access policy useradd_home may only use {{account}}, got {sorted(used)}")
        if self.accounts is AccountsMode.NONE and (self.acl_user or self.chown_user):
            raise ConfigurationError(
                "access policy: accounts 'none' has no user to grant to; set acl_user and "
                "chown_user to false (a group can still be granted)")

    def _check_permissions(self) -> None:
        _check_group_name("group", self.group)
        _check_group_name("acl_group", self.acl_group)
        if self.setgid_inbox and self.group is None:
            raise ConfigurationError("access policy setgid_inbox needs a group")
        if self.uses_acl:
            # The group bits of a mode are the ACL mask: without g+r (g+rx on directories)
            # the ACL grant would be masked out, and chmod would undo setfacl on every rerun.
            if self.file_mode & 0o040 == 0 or self.dir_mode & 0o050 != 0o050:
                raise ConfigurationError(
                    "access policy: with ACL grants, file_mode needs g+r and dir_mode g+rx "
                    f"(they are the ACL mask), got {self.file_mode:04o}/{self.dir_mode:04o}")

    @property
    def uses_acl(self) -> bool:
        return self.acl_user or self.acl_group is not None

    @property
    def needs_account(self) -> bool:
        return self.accounts is not AccountsMode.NONE

    @property
    def effective_dir_mode(self) -> int:
        return self.dir_mode | (0o2000 if self.setgid_inbox else 0)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> AccessPolicy:
        """Build from a block's or the command line's fields; unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigurationError(
                f"access policy: unknown setting(s) {', '.join(unknown)}; known: "
                f"{', '.join(sorted(known))}")
        return cls(**dict(data))

    def to_mapping(self) -> dict[str, Any]:
        """Plain values (enums as text, modes as octal text), e.g. for a block or a log."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, StrEnum):
                value = value.value
            elif f.name.endswith("_mode"):
                value = f"{value:04o}"
            out[f.name] = value
        return out
