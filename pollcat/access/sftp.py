"""Access on SFTP targets: what the protocol allows, and a forced-command helper for the rest.

SFTP can set a mode and a numeric owner (SETSTAT) but has no ACL operation, and giving a file
to another user needs root on the server (delivery-research.md §2.2). Two hooks, with the same
plan / apply / revoke / dry_run interface as the local PosixAccessHook:

* `SftpModeHook`: modes (and, if the SFTP login may, a numeric uid/gid) through an SFTP client
  (paramiko's `SFTPClient` or anything with `lstat`/`chmod`/`chown`). Symlinks are refused
  after an `lstat`; SFTP has no O_NOFOLLOW, so this relies on the SFTP login being the only
  writer of the delivery (it is: it wrote it).
* `SshHelperHook`: runs `deploy/sftp-helper/pollcat-access-helper` on the file server through
  an SSH key restricted to that one forced command. The helper validates the request again
  and applies the same grants as PosixAccessHook (user read ACLs, defaults, modes) with fixed
  argument lists on O_NOFOLLOW descriptors. Its JSON output lines are the ledger records.
  `revoke_traverse` takes the user's traverse grant on a directory above her deliveries
  (`alice/`) away again, for retention once her last delivery there is removed.

Nothing here builds a shell string: `ssh` is run with an argument list, and the words it sends
have been validated (account name, download id, safe relative path, no spaces) on both ends.
"""

from __future__ import annotations

import json
import logging
import posixpath
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pollcat.access.accounts import check_account_name
from pollcat.access.actions import Action, ActionKind, Scope, format_plan, utc_now
from pollcat.access.errors import (
    AccessToolTimeout,
    RemoteHelperFailed,
    RemoteHelperUnreachable,
    SystemAccountRefused,
    UnsafeTargetObject,
)
from pollcat.access.fdwalk import ObjectKind, check_rel
from pollcat.access.hooks import AccessContext, Record
from pollcat.access.policy import AccessPolicy
from pollcat.access.tools import SYSTEM_PATH
from pollcat.manifest import MANIFEST_NAME

log = logging.getLogger(__name__)

SSH_UNREACHABLE = 255  # ssh's own exit code for connection/authentication failures


class HelperLacksVerb(RemoteHelperFailed):
    """The helper on the server is older than the operation asked for (it refused the verb
    itself, not the request's words): update deploy/sftp-helper/pollcat-access-helper."""


def _refused_as_unknown(exc: RemoteHelperFailed) -> bool:
    """The helper's refusal of the request's shape (an older helper, a word it does not know),
    as opposed to a refusal of an account or a path."""
    return "(exit 2)" in exc.message and "expected:" in exc.message


class SftpClient(Protocol):
    """The part of paramiko's SFTPClient this hook uses."""

    def lstat(self, path: str) -> Any: ...

    def chmod(self, path: str, mode: int) -> None: ...

    def chown(self, path: str, uid: int, gid: int) -> None: ...


class SftpModeHook:
    """Modes and a numeric owner over plain SFTP (no ACLs: the protocol has none).

    `owner_uid`/`owner_gid` are numbers on the server (SFTP knows no names) and are checked
    against the policy's uid range; chown needs the SFTP login to be allowed to (root).
    """

    name = "sftp"

    def __init__(self, policy: AccessPolicy, client: SftpClient, *,
                 owner_uid: int | None = None, owner_gid: int | None = None):
        if owner_uid is not None and not policy.min_uid <= owner_uid <= policy.max_uid:
            raise SystemAccountRefused(f"uid {owner_uid} is outside the delivery range "
                                       f"{policy.min_uid}-{policy.max_uid}")
        self.policy, self.client = policy, client
        self.owner_uid, self.owner_gid = owner_uid, owner_gid

    def _objects(self, ctx: AccessContext) -> list[tuple[str, ObjectKind]]:
        base = check_rel(ctx.download_dir, download_id=ctx.download_id)
        files = [check_rel(f, download_id=ctx.download_id) for f in ctx.files]
        dirs = {base}
        for f in files:
            if not f.startswith(base + "/"):
                raise UnsafeTargetObject("delivered file is not inside the download directory",
                                         download_id=ctx.download_id, datafile=f)
            parent = posixpath.dirname(f)
            while parent != base:
                dirs.add(parent)
                parent = posixpath.dirname(parent)
        files.append(posixpath.join(base, MANIFEST_NAME))
        return ([(d, ObjectKind.DIR) for d in sorted(dirs, key=lambda d: d.count("/"))]
                + [(f, ObjectKind.FILE) for f in dict.fromkeys(files)])

    def _lstat(self, ctx: AccessContext, rel: str, kind: ObjectKind) -> Any | None:
        try:
            attrs = self.client.lstat(posixpath.join(ctx.root, rel))
        except FileNotFoundError:
            if rel.endswith("/" + MANIFEST_NAME):
                return None
            raise
        mode = attrs.st_mode or 0
        if stat.S_ISLNK(mode) or (stat.S_ISDIR(mode) != (kind is ObjectKind.DIR)) or \
                (kind is ObjectKind.FILE and not stat.S_ISREG(mode)):
            raise UnsafeTargetObject("is a symbolic link or not the expected type; nothing is "
                                     "granted on it", download_id=ctx.download_id, datafile=rel)
        return attrs

    def plan(self, ctx: AccessContext) -> list[Action]:
        actions: list[Action] = []
        owners: list[Action] = []
        for rel, kind in self._objects(ctx):
            attrs = self._lstat(ctx, rel, kind)
            if attrs is None:
                continue
            want = self.policy.file_mode if kind is ObjectKind.FILE else self.policy.dir_mode
            if stat.S_IMODE(attrs.st_mode) != want:
                actions.append(Action(ActionKind.SET_MODE, rel, kind, mode=want,
                                      previous={"mode": stat.S_IMODE(attrs.st_mode)}))
            uid_change = self.owner_uid is not None and attrs.st_uid != self.owner_uid
            gid_change = self.owner_gid is not None and attrs.st_gid != self.owner_gid
            if uid_change or gid_change:
                owners.append(Action(ActionKind.SET_OWNER, rel, kind, uid=self.owner_uid,
                                     gid=self.owner_gid,
                                     previous={"uid": attrs.st_uid, "gid": attrs.st_gid}))
        return actions + owners

    def dry_run(self, ctx: AccessContext, out: Callable[[str], None] = print) -> list[Action]:
        actions = self.plan(ctx)
        out(format_plan(ctx.download_id, actions))
        return actions

    def apply(self, ctx: AccessContext, actions: Iterable[Action], record: Record) -> int:
        done = 0
        for action in actions:
            assert action.object is not None
            attrs = self._lstat(ctx, action.path, action.object)
            if attrs is None:
                continue
            path = posixpath.join(ctx.root, action.path)
            if action.kind is ActionKind.SET_MODE and action.mode is not None:
                if stat.S_IMODE(attrs.st_mode) == action.mode:
                    continue
                self.client.chmod(path, action.mode)
            elif action.kind is ActionKind.SET_OWNER:
                uid = attrs.st_uid if action.uid is None else action.uid
                gid = attrs.st_gid if action.gid is None else action.gid
                if (uid, gid) == (attrs.st_uid, attrs.st_gid):
                    continue
                self.client.chown(path, uid, gid)
            else:
                continue
            record(action.to_record(ctx.download_id, self.name))
            done += 1
        return done

    def revoke(self, ctx: AccessContext, records: Iterable[Mapping[str, Any]],
               record: Record | None = None) -> int:
        """Set modes and owners back where they are still what this hook set."""
        undone = 0
        for action in reversed([Action.from_record(r) for r in records]):
            if action.object is None or action.kind not in (ActionKind.SET_MODE,
                                                            ActionKind.SET_OWNER):
                continue
            try:
                attrs = self._lstat(ctx, action.path, action.object)
            except (FileNotFoundError, UnsafeTargetObject):
                continue
            if attrs is None:
                continue
            path = posixpath.join(ctx.root, action.path)
            if action.kind is ActionKind.SET_MODE:
                if stat.S_IMODE(attrs.st_mode) != action.mode:
                    continue
                self.client.chmod(path, int(action.previous["mode"]))
            else:
                if (attrs.st_uid, attrs.st_gid) != (
                        action.uid if action.uid is not None else attrs.st_uid,
                        action.gid if action.gid is not None else attrs.st_gid):
                    continue
                self.client.chown(path, int(action.previous["uid"]), int(action.previous["gid"]))
            undone += 1
            if record is not None:
                kind = (ActionKind.RESTORE_MODE if action.kind is ActionKind.SET_MODE
                        else ActionKind.RESTORE_OWNER)
                record(Action(kind, action.path, action.object).to_record(ctx.download_id,
                                                                          self.name))
        return undone


def _own_word(ctx: AccessContext) -> str | None:
    """`own=N` for the helper: the directories above the download's from its (N+1)th
    component on are the user's own. None when none is, or they are not such a tail."""
    if not ctx.user_dirs:
        return None
    parts = ctx.download_dir.split("/")
    above = ["/".join(parts[:i + 1]) for i in range(len(parts) - 1)]
    first = len(above) - len(ctx.user_dirs)
    if first < 0 or list(ctx.user_dirs) != above[first:]:
        return None
    return f"own={first}"


@dataclass(frozen=True)
class SshHelperTarget:
    """How to reach the forced-command helper: the key is restricted to it on the server.

    `known_hosts` pins the server's host key (StrictHostKeyChecking=yes): an unknown or
    changed key is a refusal, not a prompt.
    """

    host: str
    user: str
    key_file: str
    known_hosts: str
    port: int = 22
    ssh: str = "ssh"
    timeout: float = 120.0

    def argv(self, words: list[str], ssh: str) -> list[str]:
        return [ssh, "-F", "/dev/null", "-T", "-x", "-a",
                "-i", self.key_file, "-p", str(self.port), "-l", self.user,
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
                "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "ConnectTimeout=30", "-o", "LogLevel=ERROR",
                "--", self.host, *words]


class SshHelperHook:
    """User read grants on an SFTP target through the pollcat-access-helper forced command.

    `ctx.download_dir` is relative to the helper's `--root` (configure the SFTP target root
    and the helper's root to be the same directory).
    """

    name = "ssh-helper"

    def __init__(self, policy: AccessPolicy, target: SshHelperTarget):
        self.policy, self.target = policy, target

    def _call(self, verb: str, ctx: AccessContext) -> list[dict[str, Any]]:
        """The helper's answer; `own=N` (the user lists her own directories above the
        download's, see `AccessContext.user_dirs`) is left out again for a helper older than
        it, which refuses the word: she then only passes them, as before."""
        own = _own_word(ctx) if verb in ("plan", "grant") else None
        if own is None:
            return self._call_words(verb, ctx, [])
        try:
            return self._call_words(verb, ctx, [own])
        except RemoteHelperFailed as exc:
            if not _refused_as_unknown(exc):
                raise  # a refusal of the request itself, not of the word
            log.warning("download %s: the access helper on %s does not take %r (an older "
                        "helper: update deploy/sftp-helper/pollcat-access-helper); the user "
                        "can reach her delivery but not list her own directory",
                        ctx.download_id, self.target.host, own)
            return self._call_words(verb, ctx, [])

    def _call_words(self, verb: str, ctx: AccessContext,
                    extra: list[str]) -> list[dict[str, Any]]:
        did = ctx.download_id
        account = check_account_name(ctx.account, download_id=did)
        rel = check_rel(ctx.download_dir, download_id=did)
        if any(ch.isspace() for ch in rel) or any(part.startswith("-") for part in rel.split("/")):
            raise UnsafeTargetObject("the helper protocol cannot carry this directory name "
                                     "(white space or a leading '-')", download_id=did,
                                     datafile=rel)
        ssh = self.target.ssh if self.target.ssh.startswith("/") else shutil.which(
            self.target.ssh, path=SYSTEM_PATH)
        if ssh is None:
            raise RemoteHelperFailed("ssh is not installed (Debian package openssh-client)",
                                     download_id=did)
        argv = self.target.argv([verb, str(int(did)), account, rel, *extra], ssh)
        try:
            proc = subprocess.run(argv, shell=False, capture_output=True, text=True,
                                  timeout=self.target.timeout, stdin=subprocess.DEVNULL,
                                  env={"PATH": SYSTEM_PATH, "LC_ALL": "C"})
        except subprocess.TimeoutExpired as exc:
            raise AccessToolTimeout(f"the access helper on {self.target.host} did not answer "
                                    f"within {self.target.timeout:g}s", download_id=did,
                                    datafile=rel) from exc
        except OSError as exc:
            raise RemoteHelperFailed(f"cannot run ssh: {exc}", download_id=did,
                                     datafile=rel) from exc
        message = proc.stderr.strip().replace("\n", "; ")[:500]
        if proc.returncode == SSH_UNREACHABLE:
            raise RemoteHelperUnreachable(f"cannot reach the access helper on "
                                          f"{self.target.host}: {message}", download_id=did,
                                          datafile=rel)
        if proc.returncode != 0:
            raise RemoteHelperFailed(f"access helper {verb} failed (exit {proc.returncode}): "
                                     f"{message}", download_id=did, datafile=rel)
        lines = []
        for line in proc.stdout.splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError as exc:
                raise RemoteHelperFailed(f"unexpected output from the access helper: "
                                         f"{line[:200]!r}", download_id=did,
                                         datafile=rel) from exc
        return lines

    @staticmethod
    def _actions(lines: Iterable[Mapping[str, Any]]) -> list[Action]:
        known = {k.value for k in ActionKind}
        out = []
        for line in lines:
            if line.get("kind") in known:
                out.append(Action.from_record(line))
            else:
                log.warning("access helper: %s", line)
        return out

    def plan(self, ctx: AccessContext) -> list[Action]:
        return self._actions(self._call("plan", ctx))

    def dry_run(self, ctx: AccessContext, out: Callable[[str], None] = print) -> list[Action]:
        actions = self.plan(ctx)
        out(format_plan(ctx.download_id, actions))
        return actions

    def _record_lines(self, ctx: AccessContext, lines: list[dict[str, Any]],
                      record: Record | None) -> int:
        applied = [line for line in lines if line.get("kind") in {k.value for k in ActionKind}]
        for line in applied:
            if record is not None:  # the account: what `revoke_traverse` asks the helper for
                record(dict(line, download_id=ctx.download_id, hook=self.name,
                            account=line.get("account") or ctx.account,
                            scope=line.get("scope", Scope.DOWNLOAD.value), at=utc_now()))
        return len(applied)

    def apply(self, ctx: AccessContext, actions: Iterable[Action], record: Record) -> int:
        """Ask the helper to grant (it re-plans on the server, so `actions` is informative)."""
        return self._record_lines(ctx, self._call("grant", ctx), record)

    def revoke(self, ctx: AccessContext, records: Iterable[Mapping[str, Any]] = (),
               record: Record | None = None) -> int:
        """Remove the user's entries in the download (the helper knows which)."""
        return self._record_lines(ctx, self._call("revoke", ctx), record)

    def revoke_traverse(self, ctx: AccessContext, dirs: Iterable[str],
                        record: Record | None = None) -> int:
        """Remove `ctx.account`'s own ACL entry on each of `dirs` (relative to the helper's
        root; the directories above a download that `grant` gave her `r-x`/`--x` on), and
        nothing else: retention's counterpart of the local hook revoking the traverse grants
        with a user's last delivery. An entry (or directory) already gone counts as done; the
        helper prints, and `record` gets, one `revoke-acl` line per entry removed. Returns how
        many. A helper older than the verb raises HelperLacksVerb (nothing changed)."""
        done = 0
        for rel in dirs:
            one = AccessContext(download_id=ctx.download_id, icat_user=ctx.icat_user,
                                account=ctx.account, root=ctx.root, download_dir=rel)
            try:
                lines = self._call_words("revoke-traverse", one, [])
            except RemoteHelperFailed as exc:
                if _refused_as_unknown(exc):
                    raise HelperLacksVerb(
                        f"the access helper on {self.target.host} has no revoke-traverse (an "
                        "older helper: update deploy/sftp-helper/pollcat-access-helper); the "
                        f"traverse grant on {rel} stays", download_id=ctx.download_id,
                        datafile=rel) from exc
                raise
            done += self._record_lines(one, lines, record)
        return done
