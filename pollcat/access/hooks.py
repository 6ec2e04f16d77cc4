"""The access hook of a local (or locally mounted) target: plan, apply, revoke.

The pipeline calls it after every file is verified and before it reports COMPLETE, so a user is
never told that data is ready which they cannot read:

    hook = PosixAccessHook(policy)
    actions = hook.plan(ctx)            # what differs from the policy, nothing changed yet
    hook.apply(ctx, actions, record)    # each applied action -> record(dict) (the ledger)
    hook.revoke(ctx, records)           # undo, from the ledger records (retention, expiry)

`plan` compares the desired state with what is on disk (owner, mode, named ACL entries) and
returns only the differences, so a rerun plans, applies and records nothing. `apply` checks each
action against the disk again just before changing it. Every object is reached through
descriptors opened with O_NOFOLLOW below the root (fdwalk), never by a path a symlink could
redirect.

What gets what (D = the download's directory):

* the delivered files and the manifest: owner/group/mode, ACL `r--` for the user and group;
* D and the directories below it that hold delivered files: owner/group/mode (+ setgid),
  ACL `r-x` and the same as default entries;
* directories between the root and D: only an entry added to whatever they have. The user's
  own (`alice/`, holding only her downloads: `AccessContext.user_dirs`) get `r-x` for her, so
  she can list her deliveries; shared ones (a `{facility}/` level) get a traverse entry
  (`--x`), so the user can reach D but not list what is beside it. The acl_group gets `--x`
  on both. The root itself is never touched.

pollcat creates all of it owner-only (files 0600, D and below 0700, the levels above 0711, see
`pollcat.targetfs`), so the grant only ever widens, and a download whose grant is refused or
held stays private to pollcat's account.
"""

from __future__ import annotations

import logging
import os
import posixpath
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from pollcat.access.accounts import (
    Account,
    AccountDirectory,
    create_account,
    directory_for,
    resolve_account,
    resolve_group,
)
from pollcat.access.acl import AclKey, AclTag, SetfaclBackend, perms_union
from pollcat.access.actions import Action, ActionKind, Scope, format_plan
from pollcat.access.errors import AccessError, UnsafeTargetObject
from pollcat.access.fdwalk import ObjectKind, check_rel, lexists_under, open_root, open_under
from pollcat.access.policy import AccessPolicy
from pollcat.manifest import MANIFEST_NAME

log = logging.getLogger(__name__)

Record = Callable[[dict[str, Any]], None]

#: Stands for the uid of an account the plan creates: a dry run can show the grants, and
#: `apply` plans again once the account exists, so this value never reaches setfacl.
NEW_ACCOUNT_UID = -1

FILE_PERMS = "r--"
DIR_PERMS = "r-x"
TRAVERSE_PERMS = "--x"


@dataclass(frozen=True)
class AccessContext:
    """One delivered download, as the access hook needs it.

    `download_dir` and `files` are relative to `root` (a local absolute path); `files` are the
    delivered data files (the manifest in `download_dir` is added by the hook). `user_dirs`
    are the directories above `download_dir` that are the user's own (`layout.user_dirs`):
    she may list them (`r-x`), where the other levels above only let her pass (`--x`).
    """

    download_id: int
    icat_user: str
    account: str | None
    root: str
    download_dir: str
    files: Sequence[str] = field(default_factory=tuple)
    user_dirs: Sequence[str] = field(default_factory=tuple)


class AccessHook(Protocol):
    """What the pipeline needs from any access hook (local POSIX, SFTP, SSH helper)."""

    name: str

    def plan(self, ctx: AccessContext) -> list[Action]: ...

    def apply(self, ctx: AccessContext, actions: Iterable[Action], record: Record) -> int: ...

    def revoke(self, ctx: AccessContext, records: Iterable[Mapping[str, Any]],
               record: Record | None = None) -> int: ...

    def dry_run(self, ctx: AccessContext, out: Callable[[str], None] = print) -> list[Action]: ...


def grant_access(hook: AccessHook, ctx: AccessContext, record: Record, *,
                 dry_run: bool = False, out: Callable[[str], None] = print) -> list[Action]:
    """The one call the pipeline makes after verification and before COMPLETE.

    Plans, then applies (recording every change) unless `dry_run`, in which case the plan is
    printed and nothing changes. Returns the plan. Errors are pollcat errors naming the
    download and the path: PermanentError (refused name, missing account with `on_missing:
    fail`, unsafe object, a failing tool) or TransientError (AccountHold, which asks for an
    operator alert, a tool timeout, an unreachable SSH helper).
    """
    if dry_run:
        return hook.dry_run(ctx, out)
    actions = hook.plan(ctx)
    hook.apply(ctx, actions, record)
    return actions


@dataclass(frozen=True)
class _Target:
    path: str
    kind: ObjectKind
    scope: Scope
    own: bool = False  # a directory above D that is the user's own (`AccessContext.user_dirs`)


def _parents(rel: str) -> list[str]:
    """`a/b/c` -> [`a`, `a/b`]."""
    parts = rel.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _inside(rel: str, base: str) -> bool:
    return bool(base) and (rel == base or rel.startswith(base + "/"))


class PosixAccessHook:
    """Accounts, owner/group/modes and POSIX ACLs on a local filesystem target."""

    name = "posix"

    def __init__(self, policy: AccessPolicy, *, directory: AccountDirectory | None = None,
                 acl: SetfaclBackend | None = None):
        self.policy = policy
        self.directory = directory or directory_for(policy)
        self.acl = acl or SetfaclBackend(policy.tool_timeout)

    # --- what to touch -------------------------------------------------------------------

    def targets(self, ctx: AccessContext, root_fd: int) -> list[_Target]:
        """The objects of this delivery, top-down, each once."""
        did = ctx.download_id
        base = ctx.download_dir
        if base:
            check_rel(base, download_id=did)
        files = [check_rel(f, download_id=did) for f in ctx.files]
        for f in files:
            if base and not f.startswith(base + "/"):
                raise UnsafeTargetObject(f"delivered file is not inside the download directory "
                                         f"{base!r}", download_id=did, datafile=f)
        manifest = posixpath.join(base, MANIFEST_NAME) if base else ""
        if manifest and manifest not in files and lexists_under(root_fd, manifest):
            files.append(manifest)
        dirs: dict[str, Scope] = {}
        for rel in ([base] if base else []) + files:
            for parent in _parents(rel) + ([rel] if rel == base else []):
                scope = Scope.DOWNLOAD if _inside(parent, base) else Scope.TRAVERSE
                dirs.setdefault(parent, scope)
        own = set(ctx.user_dirs)
        ordered = [_Target(d, ObjectKind.DIR, s, s is Scope.TRAVERSE and d in own)
                   for d, s in sorted(dirs.items(), key=lambda item: (item[0].count("/"),
                                                                      item[0]))]
        return ordered + [_Target(f, ObjectKind.FILE, Scope.DOWNLOAD) for f in dict.fromkeys(files)]

    # --- plan ----------------------------------------------------------------------------

    def _account(self, ctx: AccessContext) -> tuple[Account | None, bool]:
        """(account or None if to be created, whether it must be created)."""
        if not self.policy.needs_account:
            return None, False
        if ctx.account is None:
            raise AccessError("no account is mapped for this delivery",
                              download_id=ctx.download_id)
        account = resolve_account(self.policy, self.directory, ctx.account,
                                  download_id=ctx.download_id)
        return account, account is None

    def _desired_acl(self, target: _Target, uid: int | None, acl_gid: int | None,
                     current: Mapping[AclKey, str]) -> dict[AclKey, str]:
        """The named entries this target must have (only the ones that differ)."""
        wanted: dict[AclKey, str] = {}
        subjects: list[tuple[AclTag, int | None]] = []
        if self.policy.acl_user:
            subjects.append((AclTag.USER, uid))
        if acl_gid is not None:
            subjects.append((AclTag.GROUP, acl_gid))
        for tag, qualifier in subjects:
            if target.scope is Scope.TRAVERSE:  # the user lists her own, passes the others
                own = target.own and tag is AclTag.USER
                grants = [(False, DIR_PERMS if own else TRAVERSE_PERMS)]
            elif target.kind is ObjectKind.FILE:
                grants = [(False, FILE_PERMS)]
            else:
                grants = [(False, DIR_PERMS)] + ([(True, DIR_PERMS)]
                                                 if self.policy.default_acl else [])
            for default, perms in grants:
                key = AclKey(default, tag, NEW_ACCOUNT_UID if qualifier is None else qualifier)
                have = current.get(key) if qualifier is not None else None
                if target.scope is Scope.TRAVERSE and have is not None:
                    perms = perms_union(have, perms)
                if have != perms:
                    wanted[key] = perms
        return wanted

    def _plan_target(self, ctx: AccessContext, root_fd: int, target: _Target,
                     account: Account | None, owner_gid: int | None,
                     acl_gid: int | None) -> list[Action]:
        p = self.policy
        uid = account.uid if account else None
        name = ctx.account if p.needs_account else None
        actions: list[Action] = []
        with open_under(root_fd, target.path, target.kind, download_id=ctx.download_id) as fd:
            st = os.fstat(fd)
            if target.scope is Scope.DOWNLOAD:
                mode = p.file_mode if target.kind is ObjectKind.FILE else p.effective_dir_mode
                if stat.S_IMODE(st.st_mode) != mode:
                    actions.append(Action(ActionKind.SET_MODE, target.path, target.kind,
                                          target.scope, mode=mode,
                                          previous={"mode": stat.S_IMODE(st.st_mode)}))
            if p.uses_acl:
                state = self.acl.read(fd, download_id=ctx.download_id, path=target.path)
                current = state.named
                wanted = self._desired_acl(target, uid, acl_gid, current)
                if wanted:
                    previous = {"acl": {k: current[k] for k in wanted if k in current},
                                "extended_acl": state.extended,
                                "default_acl": state.has_default}
                    actions.append(Action(ActionKind.GRANT_ACL, target.path, target.kind,
                                          target.scope, account=name, uid=uid, acl=wanted,
                                          previous=previous))
            if target.scope is Scope.DOWNLOAD and (p.chown_user or owner_gid is not None):
                want_uid = (uid if uid is not None else NEW_ACCOUNT_UID) if p.chown_user else None
                if (want_uid is not None and want_uid != st.st_uid) or \
                        (owner_gid is not None and owner_gid != st.st_gid):
                    actions.append(Action(ActionKind.SET_OWNER, target.path, target.kind,
                                          target.scope, account=name if p.chown_user else None,
                                          uid=uid if p.chown_user else None, gid=owner_gid,
                                          previous={"uid": st.st_uid, "gid": st.st_gid}))
        return actions

    def plan(self, ctx: AccessContext) -> list[Action]:
        """The changes that would bring this delivery to the policy (empty: nothing to do)."""
        account, create = self._account(ctx)
        owner_gid = resolve_group(self.directory, self.policy.group,
                                  download_id=ctx.download_id).gid if self.policy.group else None
        acl_gid = resolve_group(self.directory, self.policy.acl_group,
                                download_id=ctx.download_id).gid if self.policy.acl_group else None
        actions: list[Action] = []
        if create:
            actions.append(Action(ActionKind.CREATE_ACCOUNT, scope=Scope.ACCOUNT,
                                  account=ctx.account))
        per_kind: dict[ActionKind, list[Action]] = {k: [] for k in ActionKind}
        with open_root(ctx.root, download_id=ctx.download_id) as root_fd:
            for target in self.targets(ctx, root_fd):
                try:
                    planned = self._plan_target(ctx, root_fd, target, account, owner_gid,
                                                acl_gid)
                except FileNotFoundError as exc:
                    raise AccessError("delivered object is missing", download_id=ctx.download_id,
                                      datafile=target.path) from exc
                for action in planned:
                    per_kind[action.kind].append(action)
        # modes first (setfacl then sets the mask), ACLs next, ownership last: the user gets
        # control of an object only once everything else on it is done.
        for kind in (ActionKind.SET_MODE, ActionKind.GRANT_ACL, ActionKind.SET_OWNER):
            actions += per_kind[kind]
        return actions

    def dry_run(self, ctx: AccessContext, out: Callable[[str], None] = print) -> list[Action]:
        """Print the plan (nothing is changed) and return it."""
        actions = self.plan(ctx)
        out(format_plan(ctx.download_id, actions))
        return actions

    # --- apply ---------------------------------------------------------------------------

    def apply(self, ctx: AccessContext, actions: Iterable[Action], record: Record) -> int:
        """Apply `actions` (from `plan`), recording each change made; returns how many.

        Each action is checked against the disk again first, so applying an old plan twice, or
        after someone else fixed things, changes (and records) nothing. When the plan creates
        the account, the rest is planned again with the new uid.
        """
        actions = list(actions)
        applied = 0
        if any(self._refers_to_new_account(a) for a in actions):
            created, new = create_account(self.policy, self.directory, str(ctx.account),
                                          download_id=ctx.download_id)
            if new:
                record(Action(ActionKind.CREATE_ACCOUNT, scope=Scope.ACCOUNT,
                              account=created.name, uid=created.uid, gid=created.gid,
                              ).to_record(ctx.download_id, self.name))
                log.info("download %s: created account %r (uid %d)", ctx.download_id,
                         created.name, created.uid)
                applied += 1
            actions = self.plan(ctx)
        with open_root(ctx.root, download_id=ctx.download_id) as root_fd:
            for action in actions:
                if self._refers_to_new_account(action):  # the account vanished again
                    raise AccessError(f"account {ctx.account!r} does not exist after creating "
                                      "it", download_id=ctx.download_id, datafile=action.path)
                done = self._apply_one(ctx, root_fd, action)
                if done is not None:
                    record(done.to_record(ctx.download_id, self.name))
                    applied += 1
        return applied

    def _refers_to_new_account(self, action: Action) -> bool:
        """Whether the action was planned before its account existed (see NEW_ACCOUNT_UID)."""
        if action.kind is ActionKind.CREATE_ACCOUNT:
            return True
        if action.kind is ActionKind.GRANT_ACL:
            return any(key.qualifier == NEW_ACCOUNT_UID for key in action.acl)
        return action.kind is ActionKind.SET_OWNER and self.policy.chown_user and \
            action.uid is None

    def _apply_one(self, ctx: AccessContext, root_fd: int, action: Action) -> Action | None:
        """Make the change if still needed; the action as applied, or None."""
        did, rel = ctx.download_id, action.path
        assert action.object is not None
        try:
            with open_under(root_fd, rel, action.object, download_id=did) as fd:
                st = os.fstat(fd)
                if action.kind is ActionKind.SET_MODE:
                    assert action.mode is not None
                    if stat.S_IMODE(st.st_mode) == action.mode:
                        return None
                    os.fchmod(fd, action.mode)
                    return replace(action, previous={"mode": stat.S_IMODE(st.st_mode)})
                if action.kind is ActionKind.SET_OWNER:
                    uid = -1 if action.uid is None or action.uid == st.st_uid else action.uid
                    gid = -1 if action.gid is None or action.gid == st.st_gid else action.gid
                    if uid == -1 and gid == -1:
                        return None
                    os.fchown(fd, uid, gid)
                    return replace(action, previous={"uid": st.st_uid, "gid": st.st_gid})
                if action.kind is ActionKind.GRANT_ACL:
                    state = self.acl.read(fd, download_id=did, path=rel)
                    current = state.named
                    wanted = {k: (perms_union(current[k], p) if action.scope is Scope.TRAVERSE
                                  and k in current else p)
                              for k, p in action.acl.items()}
                    wanted = {k: p for k, p in wanted.items() if current.get(k) != p}
                    if not wanted:
                        return None
                    self.acl.modify(fd, wanted, download_id=did, path=rel)
                    return replace(action, acl=wanted, previous={
                        "acl": {k: current[k] for k in wanted if k in current},
                        "extended_acl": state.extended, "default_acl": state.has_default})
        except FileNotFoundError as exc:
            raise AccessError("delivered object is missing", download_id=did,
                              datafile=rel) from exc
        except PermissionError as exc:
            raise AccessError(f"not allowed to change it: {exc.strerror} (the service needs "
                              "root or CAP_CHOWN/CAP_FOWNER for owner and ACL changes)",
                              download_id=did, datafile=rel) from exc
        raise AccessError(f"unknown action {action.kind}", download_id=did, datafile=rel)

    # --- revoke --------------------------------------------------------------------------

    def revoke(self, ctx: AccessContext, records: Iterable[Mapping[str, Any]],
               record: Record | None = None) -> int:
        """Undo recorded grants (newest first) where their objects still exist.

        `records` are the ones the caller chose (normally this download's; retention adds the
        traverse grants of a user's earlier deliveries when their last one goes).

        An ACL entry is removed, or set back to what it was before; a mode or owner is set back
        only while it is still what pollcat set (someone may have changed it since). Created
        accounts are kept (they may own more than this delivery). Returns how many changes.
        """
        undone = 0
        actions = [Action.from_record(r) for r in records]
        with open_root(ctx.root, download_id=ctx.download_id) as root_fd:
            for action in reversed(actions):
                if action.kind not in (ActionKind.GRANT_ACL, ActionKind.SET_MODE,
                                       ActionKind.SET_OWNER) or action.object is None:
                    continue
                try:
                    with open_under(root_fd, action.path, action.object,
                                    download_id=ctx.download_id) as fd:
                        done = self._revoke_one(ctx, fd, action)
                except (FileNotFoundError, UnsafeTargetObject) as exc:
                    log.info("download %s: not revoking on %s: %s", ctx.download_id,
                             action.path, exc)
                    continue
                if done is not None:
                    undone += 1
                    if record is not None:
                        record(done.to_record(ctx.download_id, self.name))
        return undone

    def _revoke_one(self, ctx: AccessContext, fd: int, action: Action) -> Action | None:
        did, rel = ctx.download_id, action.path
        st = os.fstat(fd)
        prev = action.previous
        if action.kind is ActionKind.SET_MODE:
            if stat.S_IMODE(st.st_mode) != action.mode or "mode" not in prev:
                return None
            os.fchmod(fd, int(prev["mode"]))
            return replace(action, kind=ActionKind.RESTORE_MODE, mode=int(prev["mode"]),
                           previous={"mode": action.mode})
        if action.kind is ActionKind.SET_OWNER:
            uid = prev["uid"] if action.uid is not None and st.st_uid == action.uid else -1
            gid = prev["gid"] if action.gid is not None and st.st_gid == action.gid else -1
            if uid == -1 and gid == -1:
                return None
            os.fchown(fd, uid, gid)
            return replace(action, kind=ActionKind.RESTORE_OWNER, uid=None if uid == -1 else uid,
                           gid=None if gid == -1 else gid,
                           previous={"uid": st.st_uid, "gid": st.st_gid})
        current = self.acl.read(fd, download_id=did, path=rel).named
        before: Mapping[AclKey, str] = prev.get("acl", {})
        restore = {k: before[k] for k in action.acl if k in before and current.get(k) != before[k]}
        drop = [k for k in action.acl if k not in before and k in current]
        if not restore and not drop:
            return None
        self.acl.modify(fd, restore, download_id=did, path=rel)
        self.acl.remove(fd, drop, download_id=did, path=rel)
        # back to a minimal ACL where pollcat made it an extended one and nothing else is left
        remaining = self.acl.read(fd, download_id=did, path=rel).named
        if not prev.get("default_acl", True) and not any(k.default for k in remaining):
            self.acl.remove_default(fd, download_id=did, path=rel)
        if not prev.get("extended_acl", True) and not any(not k.default for k in remaining):
            self.acl.remove_mask(fd, download_id=did, path=rel)
        return replace(action, kind=ActionKind.REVOKE_ACL, acl={k: "---" for k in drop} | restore,
                       previous={"acl": {k: current[k] for k in action.acl if k in current}})
