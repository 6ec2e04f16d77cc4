"""Retention on a target reached through pollcat's no-follow target layer (`pollcat.targetfs`):
SFTP targets, where the local descriptor walk of `retention` cannot go.

The same rules as `pollcat.access.retention` (read its docstring), with the target layer's
guarantees instead of descriptors: every path component is `lstat`ed and must be a real
directory (a planted link is refused, never followed), a file is removed only after its own
`lstat` says it is a regular file (of the listed size, for a manifest entry), and nothing above
the download's directory is removed.

What differs on SFTP:

* an EXPIRED download without a manifest loses the regular files below its directory that are
  owned by the uid that owns its claim file (pollcat's SFTP login wrote both); SFTP reports no
  link count, so a hard link is not told apart (unlinking removes only the name below the
  download's directory);
* the ACL entries the helper granted inside a download go with its files; the traverse grants
  on the directories above it (`alice/`: `r-x`, or `--x` on a shared level) are revoked, as
  locally, once no live delivery is below them any more, through the helper's
  `revoke-traverse` (`hook`, an `SshHelperHook`), which removes only that user's own entry.
  Which ones: the `scope: traverse` grant records of every delivery in `records` on that
  directory (the first delivery of a user granted `alice/` for all her later ones, so keep
  the records of removed deliveries in the input), one call per directory and account, and
  only where pollcat added the entry (a record without a `previous` entry for it). Each
  removal is passed to `record` (a `revoke-acl` record of the delivery being removed). A
  helper older than the verb, or one that fails, leaves the grant: a warning, and the result
  reports it left (cleanup still exits 0). See docs/access.md.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pollcat.access.actions import ActionKind, Scope
from pollcat.access.hooks import AccessContext, Record
from pollcat.access.retention import (
    CleanupOutcome,
    CleanupResult,
    DeliveryRecord,
    is_expired,
    record_result,
    report_results,
)
from pollcat.claim import CLAIM_PREFIX, current_claim
from pollcat.errors import PollcatError
from pollcat.layout import check_relpath
from pollcat.manifest import MANIFEST_NAME, Manifest, read_manifest
from pollcat.targetfs import STAGING_NAME, Kind, TargetFS

log = logging.getLogger(__name__)

HELPER_HOOK = "ssh-helper"  # `SshHelperHook.name`: the grant records revoke_traverse undoes


class _Refused(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def cleanup_target(records: Iterable[Mapping[str, Any]], tfs: TargetFS, *, retention_days: int,
                   now: datetime | None = None, dry_run: bool = False,
                   record: Record | None = None,
                   out: Callable[[str], None] | None = None,
                   hook: Any | None = None) -> list[CleanupResult]:
    """Remove the expired downloads among `records` from the target behind `tfs`; one result
    per download, as `retention.cleanup`. `record` is never called on a dry run. `hook`: the
    target's `SshHelperHook`, to revoke the traverse grants above a user's last delivery
    (without one they are reported left)."""
    now = now or datetime.now(UTC)
    deliveries = [DeliveryRecord.from_mapping(r) for r in records]
    gone: list[DeliveryRecord] = []
    results: list[CleanupResult] = []
    for delivery in deliveries:
        if not is_expired(delivery, retention_days, now):
            results.append(CleanupResult(delivery.download_id, delivery.path,
                                         CleanupOutcome.KEPT))
            continue
        result = CleanupResult(delivery.download_id, delivery.path,
                               CleanupOutcome.WOULD_REMOVE if dry_run
                               else CleanupOutcome.REMOVED)
        try:
            _cleanup_one(tfs, delivery, result, dry_run, now)
        except _Refused as exc:
            result.outcome, result.reason = CleanupOutcome.REFUSED, exc.reason
        except PollcatError as exc:  # an unsafe path, a target refusing
            log.warning("cleanup refused: %s", exc)
            result.outcome, result.reason = CleanupOutcome.REFUSED, exc.message
        if result.outcome in (CleanupOutcome.REMOVED, CleanupOutcome.WOULD_REMOVE):
            live = [d for d in deliveries if d is not delivery and d not in gone]
            _revoke_traverse(hook, delivery, live, deliveries, result, dry_run, record)
        if result.outcome in (CleanupOutcome.REMOVED, CleanupOutcome.WOULD_REMOVE,
                              CleanupOutcome.GONE):
            gone.append(delivery)
        results.append(result)
        record_result(result, record, dry_run)
    report_results(results, out, dry_run)
    return results


def _ancestors(rel: str) -> list[str]:
    parts = rel.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _traverse_grants(delivery: DeliveryRecord, live: Sequence[DeliveryRecord],
                     everyone: Sequence[DeliveryRecord]) -> dict[tuple[str, str | None], bool]:
    """The helper's traverse grants to revoke once `delivery` is removed, as
    `retention._revocable`: on each directory above it that no live delivery lies below any
    more, whichever delivery recorded them. (directory, account) -> whether pollcat added
    the entry (some record of it has no `previous` entry: it was not there before)."""
    found: dict[tuple[str, str | None], bool] = {}
    for path in _ancestors(delivery.path):
        if any(other.path.startswith(path + "/") for other in live):
            continue
        for g in (g for other in everyone for g in other.grants):
            if (g.get("kind") != ActionKind.GRANT_ACL.value or g.get("hook") != HELPER_HOOK
                    or g.get("scope") != Scope.TRAVERSE.value or g.get("path") != path
                    or g.get("revoked")):
                continue
            before = (g.get("previous") or {}).get("acl") or {}
            added = any(key not in before for key in (g.get("acl") or {}))
            key = (path, g.get("account"))
            found[key] = found.get(key, False) or added
    return found


def _revoke_traverse(hook: Any | None, delivery: DeliveryRecord,
                     live: Sequence[DeliveryRecord], everyone: Sequence[DeliveryRecord],
                     result: CleanupResult, dry_run: bool, record: Record | None) -> None:
    """Revoke the traverse grants above a removed delivery; what cannot be is reported left
    (the delivery's outcome stays: its files are gone)."""
    from pollcat.access.sftp import HelperLacksVerb

    for (path, account), added in sorted(_traverse_grants(delivery, live, everyone).items(),
                                         key=lambda kv: (-kv[0][0].count("/"), kv[0][0],
                                                         kv[0][1] or "")):
        if not added:
            continue  # her entry was there before pollcat's grant: not pollcat's to remove
        if dry_run:
            result.grants_revoked += 1
            continue
        why = None
        if account is None:
            why = "no account recorded with the grant"
        elif hook is None:
            why = "no access helper to revoke it"
        else:
            ctx = AccessContext(download_id=delivery.download_id, icat_user="",
                                account=account, root="", download_dir=delivery.path)
            try:
                result.grants_revoked += hook.revoke_traverse(ctx, [path], record)
            except HelperLacksVerb as exc:
                log.warning("download %s: %s", delivery.download_id, exc.message)
                why = "the access helper is too old to revoke it: update it"
            except PollcatError as exc:
                log.warning("download %s: the traverse grant on %s is not revoked: %s",
                            delivery.download_id, path, exc.message)
                why = exc.message
        if why is not None:
            result.left_behind.append(f"traverse grant on {path} for {account} ({why})")


def _cleanup_one(tfs: TargetFS, delivery: DeliveryRecord, result: CleanupResult, dry_run: bool,
                 now: datetime) -> None:
    did, base = delivery.download_id, delivery.path
    try:
        check_relpath(base)
    except PollcatError as exc:
        raise _Refused(f"unsafe download directory: {exc.message}") from None
    entry = tfs.lstat(base)
    if entry is None:
        result.outcome, result.reason = CleanupOutcome.GONE, "already removed"
        return
    if entry.kind is not Kind.DIR:
        raise _Refused(f"the download's directory is a {entry.kind.value}: left alone")
    manifest: Manifest | None = None
    if tfs.lstat(posixpath.join(base, MANIFEST_NAME)) is not None:
        manifest = read_manifest(tfs, base)
        if manifest is None or manifest.download_id != did or (
                manifest.dir and manifest.dir != base):
            if delivery.removed_before:
                result.outcome, result.reason = CleanupOutcome.GONE, "removed earlier"
                return
            raise _Refused("the manifest is unreadable or names another download: left alone")
    staging = posixpath.join(base, STAGING_NAME)
    if manifest is not None:
        dirs = _remove_listed(tfs, delivery, manifest, result, dry_run)
        dirs |= _remove_owned(tfs, base, staging, None, result, dry_run)
    elif delivery.removed_before:
        result.outcome, result.reason = CleanupOutcome.GONE, "removed earlier"
        return
    elif not delivery.expired:
        raise _Refused("no manifest: not provably pollcat's delivery")
    else:
        generation, claim = current_claim(tfs, base)
        if claim is None or claim.download_id != did:
            raise _Refused(f"no manifest and no claim of this download in {STAGING_NAME}: not "
                           "provably pollcat's")
        if claim.expires_at > now.timestamp():
            result.outcome = CleanupOutcome.KEPT
            result.reason = f"being delivered by {claim.describe()}"
            return
        owner = tfs.lstat(f"{staging}/{CLAIM_PREFIX}{generation}")
        if owner is None or owner.uid is None:
            raise _Refused("the claim's owner is unknown: not provably pollcat's")
        dirs = _remove_owned(tfs, base, base, owner.uid, result, dry_run)
    _remove_empty_dirs(tfs, base, dirs | {base}, result, dry_run)


def _remove_listed(tfs: TargetFS, delivery: DeliveryRecord, manifest: Manifest,
                   result: CleanupResult, dry_run: bool) -> set[str]:
    """The manifest's files that are unchanged, then the manifest."""
    dirs: set[str] = set()
    for name, size in [(f.path, f.size) for f in manifest.files] + [(MANIFEST_NAME, None)]:
        rel = posixpath.join(delivery.path, name)
        try:
            check_relpath(rel)
            entry = tfs.lstat(rel)
        except PollcatError as exc:
            result.left_behind.append(f"{name} ({exc.message})")
            continue
        if entry is None:
            continue
        if entry.kind is not Kind.FILE or (size is not None and entry.size != size):
            result.left_behind.append(f"{name} (changed since delivery)")
            continue
        if not dry_run:
            tfs.remove(rel)
        result.files_removed += 1
        dirs.add(posixpath.dirname(rel))
    return dirs


def _remove_owned(tfs: TargetFS, base: str, top: str, uid: int | None, result: CleanupResult,
                  dry_run: bool) -> set[str]:
    """Regular files below `top` (owned by `uid`, when given); the rest is reported."""
    dirs: set[str] = set()
    pending = [top]
    while pending:
        rel = pending.pop()
        if tfs.lstat(rel) is None:
            continue
        dirs.add(rel)
        for name in sorted(tfs.list_names(rel)):
            here = posixpath.join(rel, name)
            shown = here[len(base) + 1:]
            entry = tfs.lstat(here)
            if entry is None:
                continue
            if entry.kind is Kind.DIR:
                pending.append(here)
            elif entry.kind is not Kind.FILE:
                result.left_behind.append(f"{shown} (not a regular file)")
            elif uid is not None and entry.uid != uid:
                result.left_behind.append(f"{shown} (not pollcat's: uid {entry.uid})")
            else:
                if not dry_run:
                    tfs.remove(here)
                result.files_removed += 1
    return dirs


def _remove_empty_dirs(tfs: TargetFS, base: str, dirs: Iterable[str], result: CleanupResult,
                       dry_run: bool) -> None:
    candidates: set[str] = set()
    for d in dirs:
        while d == base or d.startswith(base + "/"):
            candidates.add(d)
            d = posixpath.dirname(d)
    for rel in sorted(candidates, key=lambda p: (-p.count("/"), p)):
        if dry_run:
            result.dirs_removed += 1
        elif tfs.lstat(rel) is not None and tfs.remove_empty_dir(rel):
            result.dirs_removed += 1
