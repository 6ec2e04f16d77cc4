"""What runs beside the deliveries, from the ledger: retention (`pollcat cleanup`), the
verifying pass (`pollcat verify`) and the status table an operator reads."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

from pollcat import logsafe
from pollcat.access.retention import (
    CleanupOutcome,
    CleanupResult,
    DeliveryRecord,
    cleanup_command,
    is_expired,
)
from pollcat.config import PipelineConfig
from pollcat.delivery import open_download_target, verify_download
from pollcat.delivery_s3 import is_object_store, s3_settings
from pollcat.errors import PollcatError
from pollcat.grants import GlobusGranter
from pollcat.states import Verdict

log = logging.getLogger("pollcat.maintenance")


def _was_removed(rec: Any) -> bool:
    return any(r.get("outcome") in ("removed", "gone") for r in rec.removed)


def retention_records(state: Any, transport: str) -> list[dict[str, Any]]:
    """The ledger's downloads on `transport` that retention looks at: delivered ones (age from
    `delivered_at`) and EXPIRED ones whose directory was claimed (age from `expired_at`; from
    the record's last update for ledgers written before that field)."""
    records = []
    for r in state.records():
        if r.transport != transport or not r.path:
            continue
        if r.delivered_at:
            since = {"delivered_at": r.delivered_at}
        elif r.verdict == Verdict.EXPIRED and (r.expired_at or r.updated):
            since = {"expired_at": r.expired_at or r.updated}
        else:
            continue  # being delivered, or waiting: not retention's
        records.append({"download_id": r.download_id, "path": r.path, **since,
                        "grants": r.grants, "removed": _was_removed(r)})
    return records


def cleanup(cfg: PipelineConfig, state: Any, globus: GlobusGranter, *, dry_run: bool = False,
            out: Callable[[str], None] = print) -> int:
    """Remove deliveries (and EXPIRED downloads' partly placed files) older than their target's
    `retention_days`, revoke the grants recorded for them (ACLs, Globus rules: a rule already
    gone counts as revoked) and, on Globus targets, pollcat's orphaned rules. Only what pollcat
    delivered (its manifest, unchanged files) is removed; exit code 1 when something was
    refused. Local (or locally mounted) roots, S3 targets, and SFTP targets through their own
    connection (the traverse grant above a user's last delivery through the access helper's
    `revoke-traverse`). `dry_run` changes nothing:
    no file, no grant, no ledger record. A second run changes nothing and exits 0 (what was
    removed is `gone`)."""
    status = 0
    for transport, target in cfg.routes.items():
        policy = target.access_policy
        if policy is None or policy.retention_days == 0:
            continue
        records = retention_records(state, transport)
        record = None if dry_run else (lambda r: state.update(
            int(r["download_id"]), removed=lambda rec: [*rec.removed, r]))
        url = urlparse(target.url)
        if is_object_store(target):
            out(f"{transport}: {len(records)} delivery(ies) on record under {target.url}")
            status |= cleanup_object_store(records, target, policy.retention_days,
                                           dry_run=dry_run, record=record, out=out)
            continue
        if url.scheme not in ("", "file", "local"):
            status |= _cleanup_remote(records, target, transport, policy.retention_days,
                                      dry_run=dry_run, record=record, out=out)
        else:
            root = url.path.rstrip("/") or "/"
            out(f"{transport}: {len(records)} delivery(ies) on record under {root}")
            status |= cleanup_command(records, root=root, policy=policy, dry_run=dry_run,
                                      out=out, record=record)
        if not dry_run:
            _revoke_globus(state, globus, target, transport, out)
    return status


def _cleanup_remote(records: list[dict[str, Any]], target: Any, transport: str,
                    retention_days: int, *, dry_run: bool,
                    record: Callable[[dict], None] | None, out: Callable[[str], None]) -> int:
    """Retention through the target's own connection (SFTP): files and directories, and the
    traverse grants above a user's last delivery through the access helper (docs/access.md)."""
    from pollcat.access.retention_remote import cleanup_target

    hook = None
    if target.helper_target is not None and target.access_policy is not None:
        from pollcat.access.sftp import SshHelperHook

        hook = SshHelperHook(target.access_policy, target.helper_target)
    _fs, root, tfs = open_download_target(target)
    out(f"{transport}: {len(records)} delivery(ies) on record under {tfs.path('')}")
    results = cleanup_target(records, tfs, retention_days=retention_days, dry_run=dry_run,
                             record=record, out=out, hook=hook)
    counts = {o: sum(1 for r in results if r.outcome is o) for o in CleanupOutcome}
    out("summary: " + ", ".join(f"{n} {o.value}" for o, n in counts.items() if n))
    return 1 if counts[CleanupOutcome.REFUSED] else 0


def cleanup_object_store(records: list[dict[str, Any]], target: Any, retention_days: int, *,
                         dry_run: bool = False, record: Callable[[dict], None] | None = None,
                         out: Callable[[str], None] = print,
                         now: datetime | None = None) -> int:
    """Retention on an S3 target: each expired download's objects listed in its manifest
    object, then the manifest, and its incomplete multipart uploads (`S3Target.
    remove_delivery`). Same outcomes, records and exit code as the local cleanup."""
    from pollcat.s3target import S3Target

    store = S3Target(s3_settings(target))
    now = now or datetime.now(UTC)
    results: list[CleanupResult] = []
    for raw in records:
        delivery = DeliveryRecord.from_mapping(raw)
        if not is_expired(delivery, retention_days, now):
            results.append(CleanupResult(delivery.download_id, delivery.path,
                                         CleanupOutcome.KEPT))
            continue
        result = CleanupResult(delivery.download_id, delivery.path,
                               CleanupOutcome.WOULD_REMOVE if dry_run else CleanupOutcome.REMOVED)
        try:
            done = store.remove_delivery(delivery.path, download_id=delivery.download_id,
                                         expired=delivery.expired,
                                         removed_before=delivery.removed_before,
                                         dry_run=dry_run)
        except PollcatError as exc:
            log.warning("cleanup failed: %s", exc)
            result.outcome, result.reason = CleanupOutcome.REFUSED, exc.message
        else:
            if done.refused:
                result.outcome, result.reason = CleanupOutcome.REFUSED, done.refused
            elif done.nothing:
                result.outcome, result.reason = CleanupOutcome.GONE, "already removed"
            else:
                result.files_removed, result.left_behind = done.removed, done.left
                if done.aborted:
                    result.reason = f"{done.aborted} incomplete upload(s) aborted"
        results.append(result)
        if record is not None and not dry_run and result.outcome not in (
                CleanupOutcome.GONE, CleanupOutcome.KEPT):
            record(result.to_record())
    for result in results:
        out(("[dry run] " if dry_run else "") + result.describe())
    counts = {o: sum(1 for r in results if r.outcome is o) for o in CleanupOutcome}
    out("summary: " + ", ".join(f"{n} {o.value}" for o, n in counts.items() if n))
    return 1 if counts[CleanupOutcome.REFUSED] else 0


def _revoke_globus(state: Any, globus: GlobusGranter, target: Any, transport: str,
                   out: Callable[[str], None]) -> None:
    grants = globus.client(target)
    if grants is None:
        return
    live = []
    for rec in state.records():
        if rec.transport != transport or not rec.path:
            continue
        removed = _was_removed(rec)
        if not removed:
            live.append(rec.path)
            continue
        for g in rec.grants:
            if g.get("hook") == "globus" and not g.get("revoked"):
                present = grants.revoke(g["rule_id"], download_id=rec.download_id)
                out(f"download {rec.download_id}: Globus rule {g['rule_id']} revoked"
                    + ("" if present else " (it was already gone)"))
                state.update(rec.download_id, grants=lambda r, rid=g["rule_id"]: [
                    dict(x, revoked=True) if x.get("rule_id") == rid else x for x in r.grants])
    for orphan in grants.reconcile(live, managed_prefix="/"):
        out(f"Globus rule {orphan.rule_id} on {orphan.path} was pollcat's and no delivery is "
            "there any more: removed")


def verify(cfg: PipelineConfig, state: Any, out: Callable[[str], None] = print) -> int:
    """Re-read every delivered download's files on its target against its manifest (size and
    CRC32): a COMPLETE download whose files went missing or changed is reported (exit code
    1), never silently trusted. Changes nothing."""
    bad = 0
    for rec in state.records():
        target = cfg.routes.get(rec.transport)
        if rec.verdict not in (Verdict.DELIVERED, Verdict.COMPLETED) or target is None \
                or _was_removed(rec):  # a dry run's `would-remove` (older ledgers) is no removal
            continue
        check = verify_download(target, rec.path)
        out(f"download {rec.download_id}: {'ok' if check.ok else 'PROBLEM'}: "
            f"{check.summary()}")
        if not check.ok:
            bad += 1
            log.error("download %s: delivered files do not match the manifest: %s",
                      rec.download_id, check.summary())
    out(f"summary: {bad} download(s) with problems")
    return 1 if bad else 0


def status_rows(state: Any, limit: int = 1000) -> list[dict]:
    """Every download pollcat knows, newest first: what it is doing, since when, and why."""
    rows = []
    for rec in sorted(state.records(), key=lambda r: -r.download_id)[:limit]:
        rows.append({
            "download_id": rec.download_id, "transport": rec.transport,
            "state": str(rec.verdict or rec.outcome or "seen"),
            "since": rec.outcome_since or rec.first_seen, "first_seen": rec.first_seen,
            "files": rec.files, "reason": logsafe.redact(rec.reason or rec.last_error)})
    return rows
