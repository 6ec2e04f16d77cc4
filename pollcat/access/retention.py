"""Retention: removing deliveries older than a target's retention period (`pollcat cleanup`).

Diamond's staging area keeps restored data 15 days; a target's `retention_days` says the same
here (0 keeps deliveries forever). Cleanup works from the ledger's records of delivered
downloads, and of EXPIRED ones whose directory was claimed (their files may be partly placed),
and is deliberately narrow, because it deletes:

* a download's age is counted from `delivered_at` when it was delivered, else from
  `expired_at`, when pollcat gave up on it (the ledger's first EXPIRED verdict);

* a delivery is removed only if its directory still holds pollcat's manifest and the manifest
  names the same download id and directory as the ledger record; otherwise it is refused and
  left alone (someone else's data, or a directory reused since);
* only the files the manifest lists are unlinked, each only if it is still a regular file of
  the listed size (a symlink or a changed file is left and reported), then the manifest, then
  directories that became empty, from the deepest up to the download's directory. Directories
  above it (e.g. the user's `alice/`) are never removed;
* pollcat's staging directory `<download>/.pollcat/` goes too: the regular files in it that
  pollcat's euid owns with one link (claim, part files), then the directory;
* an EXPIRED download has no manifest. Its directory is pollcat's only if the claim file in its
  staging directory names the download (the claim of a download that was never delivered stays,
  lease 0, to name it) and that claim's lease is over (a live one: `kept`, it is being
  delivered). Then only what pollcat created is removed: regular files below the directory owned
  by pollcat's euid with one link, the staging directory, and the directories that became empty.
  Anything else (a symlink, another owner's file, a hard link) is left and reported. The ledger
  does not keep the planned paths (thousands per download): the claim proves the directory is
  this download's, and ownership plus one link is what pollcat placed in it;
* everything is reached through descriptors opened with O_NOFOLLOW below the root (fdwalk);
* the ACL grants recorded for the download are revoked where their objects remain, and the
  traverse grants on the directories above it once no live delivery is below them. Keep the
  records of removed deliveries in the input (they come back as `gone`): the traverse grant
  on `alice/` was recorded by alice's first delivery, and is revoked with her last;
* `dry_run` reports what would happen and changes nothing: no file, no grant and no ledger
  record (`record` is not called);
* cleanup is idempotent: a download whose directory is gone is `gone` (nothing recorded), and
  one removed earlier (`"removed": true` in its mapping) whose directory still holds what was
  not pollcat's is `gone` too, not refused, so later runs exit 0 and change nothing.

Ledger input, one mapping per delivered download::

    {"download_id": 42, "path": "alice/alice_run42", "delivered_at": "2026-11-01T10:00:00Z",
     "grants": [<records written by the access hook's apply>]}
    {"download_id": 43, "path": "alice/alice_run43", "expired_at": "2026-11-02T10:00:00Z",
     "removed": false}   # an EXPIRED download (no delivered_at)
"""

from __future__ import annotations

import errno
import json
import logging
import os
import posixpath
import stat
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pollcat.access.actions import ActionKind, Scope, utc_now
from pollcat.access.errors import AccessError, RetentionRefused, UnsafeTargetObject
from pollcat.access.fdwalk import (
    DIR_FLAGS,
    FILE_FLAGS,
    ObjectKind,
    check_rel,
    open_root,
    open_under,
)
from pollcat.access.hooks import AccessContext, PosixAccessHook, Record
from pollcat.access.policy import AccessPolicy
from pollcat.claim import ClaimRecord, is_claim_name, parse_claim
from pollcat.manifest import MANIFEST_NAME, Manifest
from pollcat.targetfs import STAGING_NAME

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 64 * 1024 * 1024


class CleanupOutcome(StrEnum):
    KEPT = "kept"                  # not older than the retention period
    WOULD_REMOVE = "would-remove"  # dry run
    REMOVED = "removed"
    GONE = "gone"                  # the directory no longer exists
    REFUSED = "refused"            # not provably pollcat's delivery: left alone


@dataclass(frozen=True)
class DeliveryRecord:
    """A delivered (or EXPIRED) download as the ledger knows it. `delivered_at` is the moment
    its age counts from: the delivery, or for an EXPIRED download never delivered, when it
    expired (`expired` is then True)."""

    download_id: int
    path: str
    delivered_at: datetime
    grants: tuple[Mapping[str, Any], ...] = ()
    expired: bool = False
    removed_before: bool = False  # an earlier cleanup removed it (the ledger's `removed`)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> DeliveryRecord:
        delivered = data.get("delivered_at") or ""
        since = delivered or data.get("expired_at") or ""
        if not since:
            raise KeyError(f"download {data.get('download_id')}: neither delivered_at nor "
                           "expired_at")
        when = datetime.fromisoformat(str(since).replace("Z", "+00:00"))
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return cls(download_id=int(data["download_id"]), path=str(data["path"]),
                   delivered_at=when, grants=tuple(data.get("grants") or ()),
                   expired=not delivered, removed_before=bool(data.get("removed")))


@dataclass
class CleanupResult:
    download_id: int
    path: str
    outcome: CleanupOutcome
    files_removed: int = 0
    dirs_removed: int = 0
    left_behind: list[str] = field(default_factory=list)
    grants_revoked: int = 0
    reason: str | None = None

    def describe(self) -> str:
        text = f"download {self.download_id} ({self.path}): {self.outcome.value}"
        if self.outcome in (CleanupOutcome.REMOVED, CleanupOutcome.WOULD_REMOVE):
            text += f", {self.files_removed} file(s), {self.dirs_removed} dir(s)"
            if self.grants_revoked:
                text += f", {self.grants_revoked} grant(s) revoked"
        if self.left_behind:
            text += f"; left: {', '.join(self.left_behind)}"
        if self.reason:
            text += f" ({self.reason})"
        return text

    def to_record(self) -> dict[str, Any]:
        return {"download_id": self.download_id, "kind": "remove-delivery", "path": self.path,
                "outcome": self.outcome.value, "files_removed": self.files_removed,
                "dirs_removed": self.dirs_removed, "left_behind": list(self.left_behind),
                "grants_revoked": self.grants_revoked, "reason": self.reason, "at": utc_now()}


def is_expired(delivery: DeliveryRecord, retention_days: int, now: datetime) -> bool:
    """Older than the retention period (never, when it is 0)."""
    return retention_days > 0 and now - delivery.delivered_at > timedelta(days=retention_days)


def _read_manifest(dir_fd: int, delivery: DeliveryRecord) -> Manifest:
    """The manifest in the download's directory, matching the record, or RetentionRefused."""
    did = delivery.download_id
    where = posixpath.join(delivery.path, MANIFEST_NAME)
    try:
        fd = os.open(MANIFEST_NAME, FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise RetentionRefused(f"no manifest ({exc.strerror}): not provably pollcat's delivery",
                               download_id=did, datafile=where) from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RetentionRefused("the manifest is not a regular file", download_id=did,
                                   datafile=where)
        with os.fdopen(os.dup(fd), "rb") as f:
            body = f.read(MAX_MANIFEST_BYTES + 1)
    finally:
        os.close(fd)
    try:
        manifest = Manifest.from_json(json.loads(body.decode("utf-8")))
    except (ValueError, KeyError, TypeError) as exc:
        raise RetentionRefused(f"unreadable manifest: {exc}", download_id=did,
                               datafile=where) from exc
    if manifest.download_id != did or (manifest.dir and manifest.dir != delivery.path):
        raise RetentionRefused(
            f"the manifest is for download {manifest.download_id} in {manifest.dir!r}, not "
            "this record: left alone", download_id=did, datafile=where)
    return manifest


def _remove_files(root_fd: int, delivery: DeliveryRecord, manifest: Manifest,
                  result: CleanupResult, dry_run: bool) -> set[str]:
    """Unlink the listed files that are unchanged; returns the directories they were in."""
    dirs: set[str] = set()
    entries = [(f.path, f.size) for f in manifest.files] + [(MANIFEST_NAME, None)]
    for name, size in entries:
        rel = posixpath.join(delivery.path, name)
        try:
            check_rel(rel, download_id=delivery.download_id)
            parent_rel, _, leaf = rel.rpartition("/")
            with open_under(root_fd, parent_rel, ObjectKind.DIR,
                            download_id=delivery.download_id) as parent:
                st = os.stat(leaf, dir_fd=parent, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode) or (size is not None and st.st_size != size):
                    result.left_behind.append(f"{name} (changed since delivery)")
                    continue
                if not dry_run:
                    os.unlink(leaf, dir_fd=parent)
        except FileNotFoundError:
            continue
        except UnsafeTargetObject as exc:
            result.left_behind.append(f"{name} ({exc.message})")
            continue
        result.files_removed += 1
        dirs.add(parent_rel)
    return dirs


def _remove_empty_dirs(root_fd: int, delivery: DeliveryRecord, dirs: Iterable[str],
                       result: CleanupResult, dry_run: bool) -> None:
    """rmdir the download's directories that are now empty, deepest first, never above it."""
    base = delivery.path
    candidates: set[str] = set()
    for d in dirs:
        while d == base or d.startswith(base + "/"):
            candidates.add(d)
            d = d.rpartition("/")[0]
    for rel in sorted(candidates, key=lambda p: (-p.count("/"), p)):
        parent_rel, _, leaf = rel.rpartition("/")
        try:
            if dry_run:
                result.dirs_removed += 1
                continue
            if parent_rel:
                with open_under(root_fd, parent_rel, ObjectKind.DIR,
                                download_id=delivery.download_id) as parent:
                    os.rmdir(leaf, dir_fd=parent)
            else:
                os.rmdir(leaf, dir_fd=root_fd)
            result.dirs_removed += 1
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT, errno.ENOTDIR):
                raise
        except UnsafeTargetObject:
            continue


def _has(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _claim_of(dir_fd: int) -> ClaimRecord | None:
    """The current claim in the download's staging directory (never through a link)."""
    try:
        staging = os.open(STAGING_NAME, DIR_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        names = [n for n in os.listdir(staging) if is_claim_name(n)]
        if not names:
            return None
        name = max(names, key=lambda n: int(n.rsplit(".", 1)[1]))
        try:
            fd = os.open(name, FILE_FLAGS, dir_fd=staging)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            with os.fdopen(os.dup(fd), "rb") as f:
                return parse_claim(f.read(64 * 1024))
        finally:
            os.close(fd)
    finally:
        os.close(staging)


def _remove_owned(root_fd: int, delivery: DeliveryRecord, rel_dir: str, result: CleanupResult,
                  dry_run: bool) -> set[str]:
    """Unlink the regular files below `rel_dir` that pollcat's euid owns with one link (what
    pollcat created), never following a link; report the rest. Returns the directories seen,
    for `_remove_empty_dirs`."""
    did, euid = delivery.download_id, os.geteuid()
    dirs: set[str] = set()
    pending = [rel_dir]
    while pending:
        rel = pending.pop()
        try:
            with open_under(root_fd, rel, ObjectKind.DIR, download_id=did) as fd:
                dirs.add(rel)
                for name in sorted(os.listdir(fd)):
                    here = posixpath.join(rel, name)
                    shown = here[len(delivery.path) + 1:]
                    try:
                        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        pending.append(here)
                    elif not stat.S_ISREG(st.st_mode):
                        result.left_behind.append(f"{shown} (not a regular file)")
                    elif st.st_uid != euid or st.st_nlink != 1:
                        result.left_behind.append(f"{shown} (not pollcat's: uid {st.st_uid}, "
                                                  f"{st.st_nlink} link(s))")
                    else:
                        if not dry_run:
                            os.unlink(name, dir_fd=fd)
                        result.files_removed += 1
        except FileNotFoundError:
            continue
        except UnsafeTargetObject as exc:
            result.left_behind.append(f"{rel} ({exc.message})")
    return dirs


def _ancestors(rel: str) -> list[str]:
    parts = rel.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _revocable(delivery: DeliveryRecord, live: Sequence[DeliveryRecord],
               everyone: Sequence[DeliveryRecord]) -> list[Mapping[str, Any]]:
    """The ACL grants to revoke once `delivery` is removed.

    Its own grants on its own objects, plus the traverse grants on the directories above it
    that no live delivery lies below any more, whichever delivery recorded them (the first
    delivery of a user grants `alice/` for all later ones). Modes and owners are not restored:
    what remains (a user's own files) stays as private as it was.
    """
    grants = [g for g in delivery.grants if g.get("kind") == ActionKind.GRANT_ACL.value
              and g.get("scope") != Scope.TRAVERSE.value]
    for path in _ancestors(delivery.path):
        if any(other.path.startswith(path + "/") for other in live):
            continue
        grants += [g for other in everyone for g in other.grants
                   if g.get("kind") == ActionKind.GRANT_ACL.value
                   and g.get("scope") == Scope.TRAVERSE.value and g.get("path") == path]
    return grants


def cleanup(records: Iterable[Mapping[str, Any]], *, root: str, policy: AccessPolicy,
            now: datetime | None = None, dry_run: bool = False, record: Record | None = None,
            hook: PosixAccessHook | None = None,
            out: Callable[[str], None] | None = None) -> list[CleanupResult]:
    """Remove the expired deliveries among `records` from the local target at `root`.

    Every delivery gets a result (kept, removed, refused, ...); each one acted upon is also
    passed to `record` (for the ledger), as are the revocations. One refused delivery does not
    stop the others.
    """
    now = now or datetime.now(UTC)
    deliveries = [DeliveryRecord.from_mapping(r) for r in records]
    expired = [d for d in deliveries if is_expired(d, policy.retention_days, now)]
    gone: list[DeliveryRecord] = []
    hook = hook or PosixAccessHook(policy)
    results: list[CleanupResult] = []
    if not expired:  # nothing to open: the root may not even exist yet
        results = [CleanupResult(d.download_id, d.path, CleanupOutcome.KEPT)
                   for d in deliveries]
        for result in results:
            if out is not None:
                out(("[dry run] " if dry_run else "") + result.describe())
        return results
    with open_root(root) as root_fd:
        for delivery in deliveries:
            if delivery not in expired:
                results.append(CleanupResult(delivery.download_id, delivery.path,
                                             CleanupOutcome.KEPT))
                continue
            live = [d for d in deliveries if d is not delivery and d not in gone]
            result = _cleanup_one(root_fd, root, delivery, live, deliveries, hook, dry_run,
                                  record)
            results.append(result)
            if result.outcome in (CleanupOutcome.REMOVED, CleanupOutcome.GONE):
                gone.append(delivery)
            record_result(result, record, dry_run)
    report_results(results, out, dry_run)
    return results


def record_result(result: CleanupResult, record: Record | None, dry_run: bool) -> None:
    """A change goes to the ledger (`record`); a dry run, a download kept or already gone
    records nothing. Shared by every target's cleanup."""
    if record is not None and not dry_run and result.outcome not in (
            CleanupOutcome.GONE, CleanupOutcome.KEPT):
        record(result.to_record())


def report_results(results: Sequence[CleanupResult], out: Callable[[str], None] | None,
                   dry_run: bool) -> None:
    """One line per download for the operator, marked on a dry run."""
    for result in results:
        if out is not None:
            out(("[dry run] " if dry_run else "") + result.describe())


def _cleanup_one(root_fd: int, root: str, delivery: DeliveryRecord,
                 live: Sequence[DeliveryRecord], everyone: Sequence[DeliveryRecord],
                 hook: PosixAccessHook, dry_run: bool, record: Record | None) -> CleanupResult:
    did = delivery.download_id
    outcome = CleanupOutcome.WOULD_REMOVE if dry_run else CleanupOutcome.REMOVED
    result = CleanupResult(did, delivery.path, outcome)
    staging = posixpath.join(delivery.path, STAGING_NAME)
    try:
        with open_under(root_fd, delivery.path, ObjectKind.DIR, download_id=did) as dir_fd:
            manifest = None
            if _has(dir_fd, MANIFEST_NAME) or not (delivery.expired or delivery.removed_before):
                try:
                    manifest = _read_manifest(dir_fd, delivery)
                except RetentionRefused:
                    if not delivery.removed_before:
                        raise
            claim = None if manifest is not None or delivery.removed_before \
                else _claim_of(dir_fd)
        if manifest is None and delivery.removed_before:
            result.outcome, result.reason = CleanupOutcome.GONE, "removed earlier"
            return result
        if manifest is None:  # EXPIRED, never delivered: only what pollcat placed
            if claim is None or claim.download_id != did:
                raise RetentionRefused(
                    "no manifest and no claim of this download in " + STAGING_NAME
                    + ": not provably pollcat's", download_id=did, datafile=delivery.path)
            if claim.expires_at > time.time():
                result.outcome = CleanupOutcome.KEPT
                result.reason = f"being delivered by {claim.describe()}"
                return result
            dirs = _remove_owned(root_fd, delivery, delivery.path, result, dry_run)
        else:
            dirs = _remove_files(root_fd, delivery, manifest, result, dry_run)
            dirs |= _remove_owned(root_fd, delivery, staging, result, dry_run)
        _remove_empty_dirs(root_fd, delivery, dirs | {delivery.path}, result, dry_run)
        grants = _revocable(delivery, live, everyone)
        if dry_run:
            result.grants_revoked = len(grants)
        else:
            ctx = AccessContext(download_id=did, icat_user="", account=None, root=root,
                                download_dir=delivery.path)
            result.grants_revoked = hook.revoke(ctx, grants, record)
    except FileNotFoundError:
        result.outcome, result.reason = CleanupOutcome.GONE, "already removed"
    except AccessError as exc:
        log.warning("cleanup refused: %s", exc)
        result.outcome, result.reason = CleanupOutcome.REFUSED, exc.message
    return result


def cleanup_command(records: Iterable[Mapping[str, Any]], *, root: str, policy: AccessPolicy,
                    dry_run: bool = False, record: Record | None = None,
                    out: Callable[[str], None] = print) -> int:
    """`pollcat cleanup` for one target: prints one line per delivery and a summary.

    Exit code 0 when nothing was refused, 1 when a delivery was left alone because it could
    not be proved to be pollcat's (see the lines marked refused).
    """
    if policy.retention_days == 0:
        out("retention is 0 (keep forever): nothing to clean up")
        return 0
    results = cleanup(records, root=root, policy=policy, dry_run=dry_run, record=record, out=out)
    counts = {o: sum(1 for r in results if r.outcome is o) for o in CleanupOutcome}
    out("summary: " + ", ".join(f"{n} {o.value}" for o, n in counts.items() if n))
    return 1 if counts[CleanupOutcome.REFUSED] else 0
