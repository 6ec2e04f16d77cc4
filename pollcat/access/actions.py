"""The steps of granting access, as small records that can be shown, applied and undone.

A plan is a list of `Action`s that each change one thing on one object (relative to the
target root). Each carries what it found (`previous`), so the ledger record of an applied
action is enough to revoke it later, long after the hook that applied it is gone. Records are
plain JSON-able dicts with names, numeric ids, modes and paths only: nothing secret.

Ledger record shape (one per applied or revoked action)::

    {"download_id": 42, "hook": "posix", "kind": "grant-acl", "path": "alice/dl/a.nxs",
     "object": "file", "account": "alice", "uid": 1001, "gid": null, "mode": null,
     "acl": {"user:1001": "r--"}, "previous": {"acl": {}, "default_acl": false},
     "scope": "download", "at": "2026-11-30T12:00:00Z"}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pollcat.access.acl import AclKey
from pollcat.access.fdwalk import ObjectKind
from pollcat.manifest import utc_now


class ActionKind(StrEnum):
    CREATE_ACCOUNT = "create-account"
    SET_MODE = "set-mode"
    SET_OWNER = "set-owner"
    GRANT_ACL = "grant-acl"
    # written to the ledger when undone
    REVOKE_ACL = "revoke-acl"
    RESTORE_MODE = "restore-mode"
    RESTORE_OWNER = "restore-owner"


class Scope(StrEnum):
    """Whether an object belongs to the download or is a shared directory above it, which only
    gets a traverse (`--x`) grant and is never chowned or chmodded."""

    DOWNLOAD = "download"
    TRAVERSE = "traverse"
    ACCOUNT = "account"


@dataclass(frozen=True)
class Action:
    """One change. `uid` None on an ACL/owner action means "the account being created"."""

    kind: ActionKind
    path: str = ""
    object: ObjectKind | None = None
    scope: Scope = Scope.DOWNLOAD
    account: str | None = None
    uid: int | None = None
    gid: int | None = None
    mode: int | None = None
    acl: Mapping[AclKey, str] = field(default_factory=dict)
    previous: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for a dry run or a log."""
        where = f"{self.path or '.'} ({self.object.value})" if self.object else ""
        if self.kind is ActionKind.CREATE_ACCOUNT:
            return f"create account {self.account!r} (useradd)"
        if self.kind is ActionKind.SET_MODE:
            return f"chmod {self.mode:04o} {where} (was {self.previous.get('mode', '?')})"
        if self.kind is ActionKind.SET_OWNER:
            uid = "-" if self.uid is None and self.account is None else (
                self.uid if self.uid is not None else f"{self.account}(new)")
            return f"chown {uid}:{'-' if self.gid is None else self.gid} {where}"
        grants = ",".join(f"{k.spec()}:{p}" for k, p in sorted(self.acl.items()))
        if self.uid is None and self.account is not None:
            grants += f" (uid of new account {self.account!r})"
        return f"setfacl -m {grants} {where}"

    def to_record(self, download_id: int, hook: str = "posix") -> dict[str, Any]:
        return {"download_id": download_id, "hook": hook, "kind": self.kind.value,
                "path": self.path, "object": self.object.value if self.object else None,
                "scope": self.scope.value, "account": self.account, "uid": self.uid,
                "gid": self.gid, "mode": None if self.mode is None else f"{self.mode:04o}",
                "acl": {k.spec(): p for k, p in sorted(self.acl.items())},
                "previous": _plain(self.previous), "at": utc_now()}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Action:
        mode = record.get("mode")
        return cls(kind=ActionKind(record["kind"]), path=str(record.get("path") or ""),
                   object=ObjectKind(record["object"]) if record.get("object") else None,
                   scope=Scope(record.get("scope") or Scope.DOWNLOAD.value),
                   account=record.get("account"), uid=record.get("uid"), gid=record.get("gid"),
                   mode=None if mode is None else int(mode, 8),
                   acl={AclKey.parse(k): v for k, v in (record.get("acl") or {}).items()},
                   previous=_unplain(record.get("previous") or {}))


def _plain(previous: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in previous.items():
        if key == "acl":
            value = {k.spec(): p for k, p in sorted(value.items())}
        elif key == "mode" and isinstance(value, int):
            value = f"{value:04o}"
        out[key] = value
    return out


def _unplain(previous: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(previous)
    if "acl" in out:
        out["acl"] = {AclKey.parse(k): v for k, v in out["acl"].items()}
    if isinstance(out.get("mode"), str):
        out["mode"] = int(out["mode"], 8)
    return out




def format_plan(download_id: int, actions: list[Action]) -> str:
    """The dry-run text: one numbered line per action, or that nothing needs changing."""
    if not actions:
        return f"download {download_id}: access already as configured, nothing to change"
    lines = [f"download {download_id}: {len(actions)} access change(s):"]
    lines += [f"  {i}. {a.describe()}" for i, a in enumerate(actions, 1)]
    return "\n".join(lines)
