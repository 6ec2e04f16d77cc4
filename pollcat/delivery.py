"""One download's files onto its target: claim the directory, plan paths, transfer, verify,
write the manifest.

The state machine (`pipeline.py`) decides *whether* to deliver; this module is *how*. It knows
targets, layouts and sources, and nothing of TopCAT statuses or the ledger.

The pipeline calls, in order:

    plan = plan_delivery(download, target_cfg, facility, clients, prepared_id)
    if isinstance(plan, HeldByOther):      # another worker writes it: an outcome, not an error
        ...skip this sweep...
    results = transfer_unless_delivered(plan, prepared_id, clients, facility, total, progress)

`transfer_unless_delivered` renews the claim while it works and releases it at the end, also on
failure; `plan.release()` releases a plan that is abandoned before the transfer. Once the
manifest is durable, releasing deletes the claim and the staging directory `.pollcat/`: a
delivered folder holds the user's files and `pollcat-manifest.json`, nothing else of pollcat's
(see `claim`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from fsspec.core import url_to_fs

from pollcat import catalog
from pollcat.catalog import DatafileInfo
from pollcat.claim import DEFAULT_LEASE_S, Claim, ClaimResult, acquire
from pollcat.config import SourceKind, TargetConfig
from pollcat.errors import PermanentError, PollcatError, TransientError, UnsafePathError
from pollcat.facility import FacilityClients
from pollcat.grants import check_account, target_account
from pollcat.layout import check_not_reserved, download_template, render_path, shared_levels
from pollcat.manifest import (
    DeliveryCheck,
    manifest_files,
    read_manifest,
    verify_delivery,
    write_manifest,
)
from pollcat.sources import TransferContext, make_source, target_limit_name
from pollcat.targetfs import STAGING_NAME, TargetFS, open_target
from pollcat.topcat import Download
from pollcat.transfer import FileJob, FileResult, parse_crc

log = logging.getLogger("pollcat.delivery")


@dataclass
class DeliveryPlan:
    """Everything needed to put one download on its target, under a held claim."""

    download: Download
    target: TargetConfig
    fs: Any
    root: str
    download_dir: str
    claim: Claim
    targetfs: TargetFS
    jobs: list[FileJob] = field(default_factory=list)
    infos: dict[int, DatafileInfo] = field(default_factory=dict)

    @property
    def staging(self) -> str:
        return f"{self.download_dir}/{STAGING_NAME}"

    def release(self) -> None:
        """Give the claim back (for a plan that will not be transferred)."""
        self.claim.release()


@dataclass(frozen=True)
class HeldByOther:
    """Another live worker holds the download's claim on the target: skip it this sweep."""

    download_id: int
    path: str
    holder: str

    @property
    def reason(self) -> str:
        return f"another worker is delivering it into {self.path!r} ({self.holder})"


def open_download_target(target: TargetConfig) -> tuple[Any, str, TargetFS]:
    """(fsspec filesystem, root, no-follow target layer) for a configured target."""
    options = dict(target.storage_options)
    if urlparse(target.url).scheme not in ("", "file", "local"):
        # a fresh connection per delivery: fsspec's cached instance would keep a dropped SSH
        # connection for the rest of the sweep
        options["skip_instance_cache"] = True
    fs, root = url_to_fs(target.url, **options)
    root = root.rstrip("/") or "/"
    tfs = open_target(fs, root)
    tfs.traverse_depth = shared_levels(target.layout)  # `alice/` 0711, the download's 0700
    return fs, root, tfs


def plan_delivery(d: Download, target: TargetConfig, facility: str, clients: FacilityClients,
                  prepared_id: str, *, lease_s: float = DEFAULT_LEASE_S,
                  token: str | None = None) -> DeliveryPlan | HeldByOther:
    """Claim the download's directory on the target and map every datafile to its path.

    `token` names this worker's claim; a delivery restarted after a lost connection passes the
    same token, so its own live claim does not keep it out."""
    user = target_account(d, target)
    # the access policy's refusals (system account, uid range, missing account, hold) come
    # before any byte is written: not even the download's directory is made
    check_account(target, user, d.id)
    fs, root, tfs = open_download_target(target)
    fields = {"user": user, "download": d.file_name, "download_id": str(d.id),
              "facility": facility, "transport": d.transport}
    try:
        claim = claim_download_dir(d, target, facility, tfs, fields, lease_s=lease_s,
                                   token=token)
    except PollcatError as exc:
        raise exc.with_context(download_id=d.id) from None
    if claim.result is not ClaimResult.ACQUIRED:
        holder = claim.holder.describe() if claim.holder else "a claim being written"
        return HeldByOther(d.id, tfs.path(claim.dir), holder)
    try:
        plan = DeliveryPlan(d, target, fs, root, claim.dir, claim, tfs)
        _plan_files(plan, fields, clients, prepared_id)
    except BaseException:
        claim.release()
        raise
    return plan


def _plan_files(plan: DeliveryPlan, fields: dict[str, str], clients: FacilityClients,
                prepared_id: str) -> None:
    plan.jobs, plan.infos = plan_jobs(plan.download, plan.target, plan.download_dir, fields,
                                      clients, prepared_id)


def plan_jobs(d: Download, target: TargetConfig, download_dir: str, fields: dict[str, str],
              clients: FacilityClients, prepared_id: str
              ) -> tuple[list[FileJob], dict[int, DatafileInfo]]:
    """The IDS's list of the download's datafiles, each with its checked path on the target."""
    df_ids = clients.ids_for(d.transport).datafile_ids(prepared_id)
    infos = catalog.datafiles(clients.icat, df_ids, download_id=d.id)
    jobs: list[FileJob] = []
    seen: dict[str, str] = {}
    for info in infos:
        f = dict(fields, investigation=info.investigation, visit=info.visit,
                 dataset=info.dataset, datafile=info.name)
        try:
            rel = check_not_reserved(render_path(target.layout, f), download_dir)
        except UnsafePathError as exc:
            raise exc.with_context(download_id=d.id, datafile=info.name) from None
        if rel in seen:
            raise UnsafePathError(
                f"datafiles {seen[rel]!r} and {info.name!r} both map to {rel!r}; add "
                "{dataset} or {investigation} to the layout", download_id=d.id,
                datafile=info.name)
        seen[rel] = info.name
        jobs.append(FileJob(datafile_id=info.id, name=info.name, rel_path=rel,
                            size=info.size, checksum=info.checksum, open=None,
                            trust_stream=parse_crc(info.checksum) is None))
    return jobs, {i.id: i for i in infos}


def claim_download_dir(d: Download, target: TargetConfig, facility: str, tfs: TargetFS,
                       fields: dict[str, str], *, lease_s: float = DEFAULT_LEASE_S,
                       token: str | None = None) -> Claim:
    """Claim the download's own directory; a second download with the same fileName by the
    same user gets `<fileName>_<id>` instead of mixing files (deterministically, every run).

    Updates `fields["download"]` to the name used. The claim is exclusive across workers that
    share only the target (see `claim`).
    """
    prefix = download_template(target.layout)  # TargetConfig ensures it names the download
    claim = acquire(tfs, render_path(prefix, fields), facility=facility, download_id=d.id,
                    lease_s=lease_s, token=token)
    if claim.result is not ClaimResult.OTHER_DOWNLOAD:
        return claim
    fields["download"] = f"{d.file_name}_{d.id}"
    claim = acquire(tfs, render_path(prefix, fields), facility=facility, download_id=d.id,
                    lease_s=lease_s, token=token)
    if claim.result is ClaimResult.OTHER_DOWNLOAD:
        raise PermanentError(f"both {d.file_name!r} and {fields['download']!r} belong to other "
                             f"downloads under {tfs.path(claim.dir)!r}", download_id=d.id)
    return claim


def transfer_unless_delivered(plan: DeliveryPlan, prepared_id: str, clients: FacilityClients,
                              facility: str, total: int,
                              on_progress: Callable[[int, int], None] | None
                              ) -> list[FileResult]:
    """Every file on the target and verified, then the manifest; a present manifest that
    covers the plan means a rerun copies nothing. Holds (renews, then releases) the claim."""
    with plan.claim.keep_alive():
        return _transfer(plan, prepared_id, clients, facility, total, on_progress)


def _transfer(plan: DeliveryPlan, prepared_id: str, clients: FacilityClients, facility: str,
              total: int, on_progress: Callable[[int, int], None] | None) -> list[FileResult]:
    d = plan.download
    manifest = read_manifest(plan.targetfs, plan.download_dir)
    if manifest is not None and manifest.download_id == d.id and manifest.covers(plan.jobs):
        log.info("download %s: manifest present, already delivered", d.id)
        plan.claim.delivered()  # the manifest names the directory: the claim may go
        return [FileResult(datafile_id=j.datafile_id, rel_path=j.rel_path, bytes=j.size,
                           seconds=0.0, crc32=parse_crc(j.checksum) or 0, skipped=True)
                for j in plan.jobs]
    done = [0]

    def progress(n: int) -> None:
        done[0] += n
        if on_progress:
            on_progress(done[0], total)

    target = plan.target
    kind = target.source
    unvouched = sum(1 for j in plan.jobs if j.trust_stream)
    if unvouched and kind != SourceKind.PREPARED_ZIP:
        # the direct getData's Content-Length is ICAT's fileSize, so a short body would look
        # complete; the prepared zip's entries carry the real size and CRC32
        log.warning("download %s: ICAT has no CRC32 for %d file(s); fetching the download as "
                    "the prepared zip, whose entries vouch for their own bytes", d.id,
                    unvouched)
        kind = SourceKind.PREPARED_ZIP
    source = make_source(kind, storage_url=target.storage_url,
                         storage_options=target.storage_source_options,
                         hardlink=target.hardlink)
    ctx = TransferContext(download_id=d.id, prepared_id=prepared_id,
                          ids=clients.ids_for(d.transport),
                          session_id=clients.icat.session_id, target=plan.targetfs,
                          staging=plan.staging, concurrency=target.concurrency,
                          on_progress=progress, before_place=plan.claim.check,
                          target_slot=target_limit_name(facility, d.transport))
    results = source.transfer(ctx, plan.jobs, plan.infos)
    raise_first_failure(d.id, plan.jobs, results)
    ok = [r for r in results if isinstance(r, FileResult)]
    plan.claim.check()
    write_manifest(plan.targetfs, plan.download_dir, facility=facility, download_id=d.id,
                   file_name=d.file_name, user=d.user_name, transport=d.transport,
                   files=manifest_files(plan.jobs, plan.download_dir, ok))
    # the manifest durable (its rename too) before the claim that named the directory goes
    plan.targetfs.sync_dir(plan.download_dir)
    plan.claim.delivered()
    return ok


def raise_first_failure(download_id: int, jobs: list[FileJob],
                        results: list[FileResult | BaseException]) -> None:
    """Raise the first permanent failure (else the first failure) with the download's id."""
    failures = [(j, r) for j, r in zip(jobs, results, strict=True)
                if isinstance(r, BaseException)]
    if not failures:
        return
    permanent = [(j, r) for j, r in failures if isinstance(r, PermanentError)]
    job, err = (permanent or failures)[0]
    if isinstance(err, PollcatError):
        err.with_context(download_id=download_id, datafile=job.name)
        if len(failures) > 1:
            err.message += f" (and {len(failures) - 1} more failed file(s))"
        raise err
    raise TransientError(f"{type(err).__name__}: {err}", download_id=download_id,
                         datafile=job.name) from err


def verify_download(target: TargetConfig, download_dir: str) -> DeliveryCheck:
    """Re-read a delivered download's manifest-listed files on its target (`pollcat verify`).

    `download_dir` is root-relative (the ledger's `path`). See `manifest.verify_delivery`.
    """
    _fs, _root, tfs = open_download_target(target)
    return verify_delivery(tfs, download_dir)
