"""What runs beside the deliveries, from the ledger: retention (`pollcat cleanup`), the
verifying pass (`pollcat verify`) and the status table an operator reads."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

from pollcat import logsafe
from pollcat.access.retention import cleanup_command
from pollcat.config import PipelineConfig
from pollcat.delivery import verify_download
from pollcat.grants import GlobusGranter
from pollcat.states import Verdict

log = logging.getLogger("pollcat.maintenance")


def cleanup(cfg: PipelineConfig, state: Any, globus: GlobusGranter, *, dry_run: bool = False,
            out: Callable[[str], None] = print) -> int:
    """Remove deliveries older than their target's `retention_days`, revoke the grants recorded
    for them (ACLs, Globus rules: a rule already gone counts as revoked) and, on Globus targets,
    pollcat's orphaned rules. Only what pollcat delivered (its manifest, unchanged files) is
    removed; exit code 1 when something was refused."""
    status = 0
    for transport, target in cfg.routes.items():
        policy = target.access_policy
        if policy is None or policy.retention_days == 0:
            continue
        records = [{"download_id": r.download_id, "path": r.path,
                    "delivered_at": r.delivered_at, "grants": r.grants}
                   for r in state.records()
                   if r.transport == transport and r.delivered_at and r.path]
        root = urlparse(target.url).path.rstrip("/") or "/"
        out(f"{transport}: {len(records)} delivery(ies) on record under {root}")
        status |= cleanup_command(
            records, root=root, policy=policy, dry_run=dry_run, out=out,
            record=lambda r: state.update(int(r["download_id"]),
                                          removed=lambda rec: [*rec.removed, r]))
        if not dry_run:
            _revoke_globus(state, globus, target, transport, out)
    return status


def _revoke_globus(state: Any, globus: GlobusGranter, target: Any, transport: str,
                   out: Callable[[str], None]) -> None:
    grants = globus.client(target)
    if grants is None:
        return
    live = []
    for rec in state.records():
        if rec.transport != transport or not rec.path:
            continue
        removed = any(r.get("outcome") in ("removed", "gone") for r in rec.removed)
        if not removed:
            live.append(rec.path)
            continue
        for g in rec.grants:
            if g.get("hook") == "globus" and not g.get("revoked"):
                grants.revoke(g["rule_id"], download_id=rec.download_id)
                out(f"download {rec.download_id}: Globus rule {g['rule_id']} revoked")
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
                or rec.removed:
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
