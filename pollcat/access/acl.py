"""POSIX ACL entries, read with `getfacl` and changed with `setfacl` (argument lists).

The tools are pointed at `/proc/self/fd/<n>` of a descriptor pollcat opened with `O_NOFOLLOW`
(see fdwalk) and passed to the child: the kernel resolves that magic link to exactly the
inode that was checked, so a symlink swapped in afterwards cannot redirect the grant. (setfacl's
`--physical` would refuse the magic link itself, and it only guards against symlinks at the
moment setfacl looks, so it is not used.) Entries are numeric (`user:1001:r--`), which also
avoids a second, possibly different, name lookup inside the tools.

Only named entries (`user:<uid>`, `group:<gid>`, access and default) are managed; the owner,
owning group and other entries are the file mode, which the hook sets with fchmod.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from pollcat.access.errors import AclToolFailed
from pollcat.access.fdwalk import proc_path
from pollcat.access.tools import find_tool, run_tool


class AclTag(StrEnum):
    USER = "user"
    GROUP = "group"


@dataclass(frozen=True, order=True)
class AclKey:
    """Which entry: access or default, user or group, and the numeric id."""

    default: bool
    tag: AclTag
    qualifier: int

    def spec(self) -> str:
        return ("default:" if self.default else "") + f"{self.tag.value}:{self.qualifier}"

    @classmethod
    def parse(cls, text: str) -> AclKey:
        default = text.startswith("default:")
        tag, qualifier = text.removeprefix("default:").split(":")
        return cls(default, AclTag(tag), int(qualifier))


def perms_union(a: str, b: str) -> str:
    """`r-x` ∪ `--x` etc., in rwx order."""
    return "".join(x if x in (a + b) else "-" for x in "rwx")


def entry_spec(key: AclKey, perms: str) -> str:
    return f"{key.spec()}:{perms}"


def parse_getfacl(text: str) -> dict[AclKey, str]:
    """Named entries from `getfacl --numeric --omit-header --no-effective` output."""
    entries: dict[AclKey, str] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        body = line.removeprefix("default:")
        parts = body.split(":")
        if len(parts) != 3 or parts[0] not in ("user", "group") or not parts[1]:
            continue  # owner, owning group, mask, other: the mode's business
        entries[AclKey(line.startswith("default:"), AclTag(parts[0]), int(parts[1]))] = parts[2]
    return entries


@dataclass(frozen=True)
class AclState:
    """The named entries of an object, and whether it has any extended or default ACL."""

    named: dict[AclKey, str]
    extended: bool
    has_default: bool


ACCESS_XATTR = "system.posix_acl_access"
DEFAULT_XATTR = "system.posix_acl_default"


def _no_acl_xattrs(fd: int) -> bool:
    """True when the object certainly has a minimal ACL (neither ACL attribute is set).

    Anything else (an ACL is set, or the filesystem answers ENOTSUP) goes to getfacl, which
    reads it or reports the real problem.
    """
    for name in (ACCESS_XATTR, DEFAULT_XATTR):
        try:
            os.getxattr(fd, name)
            return False
        except OSError as exc:
            absent = exc.errno == errno.ENODATA or (
                name == DEFAULT_XATTR and exc.errno == errno.EACCES)  # files: no default ACL
            if not absent:
                return False
    return True


class SetfaclBackend:
    """Reads and changes named ACL entries of an open descriptor through the acl tools."""

    def __init__(self, timeout: float = 60.0):
        self.timeout = timeout

    def read(self, fd: int, *, download_id: int | None = None,
             path: str | None = None) -> AclState:
        """Named entries and flags; a fresh file with no ACL xattr costs no subprocess."""
        if _no_acl_xattrs(fd):
            return AclState(named={}, extended=False, has_default=False)
        tool = find_tool("getfacl", AclToolFailed, download_id=download_id)
        out = run_tool([tool, "--numeric", "--omit-header", "--absolute-names", "--no-effective",
                        "--", proc_path(fd)], error=AclToolFailed, timeout=self.timeout,
                       download_id=download_id, path=path, pass_fds=[fd])
        lines = out.splitlines()
        return AclState(named=parse_getfacl(out),
                        extended=any(line.startswith("mask::") for line in lines),
                        has_default=any(line.startswith("default:") for line in lines))

    def modify(self, fd: int, entries: Mapping[AclKey, str], *, download_id: int | None = None,
               path: str | None = None) -> None:
        if not entries:
            return
        tool = find_tool("setfacl", AclToolFailed, download_id=download_id)
        spec = ",".join(entry_spec(k, p) for k, p in sorted(entries.items()))
        run_tool([tool, "--modify", spec, "--", proc_path(fd)], error=AclToolFailed,
                 timeout=self.timeout, download_id=download_id, path=path, pass_fds=[fd])

    def remove(self, fd: int, keys: Iterable[AclKey], *, download_id: int | None = None,
               path: str | None = None) -> None:
        keys = sorted(keys)
        if not keys:
            return
        tool = find_tool("setfacl", AclToolFailed, download_id=download_id)
        run_tool([tool, "--remove", ",".join(k.spec() for k in keys), "--", proc_path(fd)],
                 error=AclToolFailed, timeout=self.timeout, download_id=download_id, path=path,
                 pass_fds=[fd])

    def remove_mask(self, fd: int, *, download_id: int | None = None,
                    path: str | None = None) -> None:
        """Drop the mask once no named access entry is left: back to a minimal ACL."""
        tool = find_tool("setfacl", AclToolFailed, download_id=download_id)
        run_tool([tool, "--remove", "mask::", "--", proc_path(fd)], error=AclToolFailed,
                 timeout=self.timeout, download_id=download_id, path=path, pass_fds=[fd])

    def remove_default(self, fd: int, *, download_id: int | None = None,
                       path: str | None = None) -> None:
        tool = find_tool("setfacl", AclToolFailed, download_id=download_id)
        run_tool([tool, "--remove-default", "--", proc_path(fd)], error=AclToolFailed,
                 timeout=self.timeout, download_id=download_id, path=path, pass_fds=[fd])
