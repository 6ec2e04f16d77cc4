"""One download's files onto its target: claim the directory, plan paths, transfer, verify,
write the manifest.

The state machine (`pipeline.py`) decides *whether* to deliver; this module is *how*. It knows
targets, layouts and sources, and nothing of TopCAT statuses or the ledger.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from fsspec.core import url_to_fs

from pollcat import catalog
from pollcat.config import TargetConfig
from pollcat.errors import PermanentError, PollcatError, TransientError, UnsafePathError
from pollcat.facility import FacilityClients
from pollcat.layout import download_template, join_under, map_user, render_path
from pollcat.manifest import manifest_files, read_manifest, write_manifest
from pollcat.sources import TransferContext, make_source
from pollcat.topcat import Download
from pollcat.transfer import FileJob, FileResult, is_local, make_dirs, target_errors

log = logging.getLogger("pollcat.delivery")

CLAIM_NAME = ".pollcat-claim"


@dataclass
class DeliveryPlan:
    download: Download
    target: TargetConfig
    fs: object
    root: str
    download_dir: str
    jobs: list[FileJob] = field(default_factory=list)
    infos: dict = field(default_factory=dict)


def plan_delivery(d: Download, target: TargetConfig, facility: str, clients: FacilityClients,
                  prepared_id: str) -> DeliveryPlan:
    """Claim the download's directory on the target and map every datafile to its path."""
    fs, root = url_to_fs(target.url, **target.storage_options)
    root = root.rstrip("/") or "/"
    user = map_user(d.user_name, target.user_rule, target.user_map)
    fields = {"user": user, "download": d.file_name, "download_id": str(d.id),
              "facility": facility, "transport": d.transport}
    try:
        download_dir = claim_download_dir(d, target, facility, fs, root, fields)
    except UnsafePathError as exc:
        raise exc.with_context(download_id=d.id, datafile=None) from None
    ids = clients.ids_for(d.transport)
    df_ids = ids.datafile_ids(prepared_id)
    infos = catalog.datafiles(clients.icat, df_ids, download_id=d.id)
    plan = DeliveryPlan(d, target, fs, root, download_dir,
                        infos={i.id: i for i in infos})
    seen: dict[str, str] = {}
    for info in infos:
        f = dict(fields, investigation=info.investigation, visit=info.visit,
                 dataset=info.dataset, datafile=info.name)
        try:
            rel = render_path(target.layout, f)
        except UnsafePathError as exc:
            raise exc.with_context(download_id=d.id, datafile=info.name) from None
        if rel in seen:
            raise UnsafePathError(
                f"datafiles {seen[rel]!r} and {info.name!r} both map to {rel!r}; add "
                "{dataset} or {investigation} to the layout", download_id=d.id,
                datafile=info.name)
        seen[rel] = info.name
        plan.jobs.append(FileJob(datafile_id=info.id, name=info.name, rel_path=rel,
                                 size=info.size, checksum=info.checksum, open=None))
    return plan

def claim_download_dir(d: Download, target: TargetConfig, facility: str, fs, root: str,
                       fields: dict) -> str:
    """The download's own directory; a second download with the same fileName by the same
    user gets `<fileName>_<id>` instead of mixing files (deterministically, on every run)."""
    prefix = download_template(target.layout)  # TargetConfig ensures it names the download
    me = f"{facility} {d.id}"
    local = is_local(fs)
    rel = render_path(prefix, fields)
    claim = join_under(root, rel + "/" + CLAIM_NAME, local=local)
    with target_errors(claim):  # the first write to the target: a refusal expires it
        owner = _read_text(fs, claim)
        if owner is not None and owner != me:
            fields["download"] = f"{d.file_name}_{d.id}"
            rel = render_path(prefix, fields)
            claim = join_under(root, rel + "/" + CLAIM_NAME, local=local)
        if _read_text(fs, claim) is None:
            make_dirs(fs, join_under(root, rel, local=local))
            with fs.open(claim, "wb") as fh:
                fh.write(me.encode())
    return rel


def transfer_unless_delivered(plan: DeliveryPlan, prepared_id: str, clients: FacilityClients,
                              facility: str, total: int, on_progress) -> list[FileResult]:
    """Every file on the target and verified, then the manifest; a present manifest that
    covers the plan means a rerun copies nothing."""
    d = plan.download
    mdir = join_under(plan.root, plan.download_dir)
    manifest = read_manifest(plan.fs, mdir)
    if manifest is not None and manifest.download_id == d.id and manifest.covers(plan.jobs):
        log.info("download %s: manifest present, already delivered", d.id)
        return [FileResult(datafile_id=j.datafile_id, rel_path=j.rel_path, bytes=j.size,
                           seconds=0.0, crc32=int(j.checksum or "0", 16), skipped=True)
                for j in plan.jobs]
    done = [0]

    def progress(n: int) -> None:
        done[0] += n
        if on_progress:
            on_progress(done[0], total)

    target = plan.target
    source = make_source(target.source, storage_url=target.storage_url,
                         storage_options=target.storage_source_options,
                         hardlink=target.hardlink)
    ctx = TransferContext(download_id=d.id, prepared_id=prepared_id,
                          ids=clients.ids_for(d.transport),
                          session_id=clients.icat.session_id, fs=plan.fs,
                          root=plan.root, concurrency=target.concurrency,
                          on_progress=progress)
    results = source.transfer(ctx, plan.jobs, plan.infos)
    raise_first_failure(d.id, plan.jobs, results)
    ok = [r for r in results if isinstance(r, FileResult)]
    write_manifest(plan.fs, mdir, facility=facility, download_id=d.id,
                   file_name=d.file_name, user=d.user_name, transport=d.transport,
                   files=manifest_files(plan.jobs, plan.download_dir, ok),
                   rel_dir=plan.download_dir)
    return ok


def raise_first_failure(download_id: int, jobs: list[FileJob],
                         results: list[FileResult | BaseException]) -> None:
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


def _read_text(fs, path: str) -> str | None:
    try:
        with fs.open(path, "rb") as fh:
            return fh.read().decode("utf-8", "replace").strip()
    except FileNotFoundError:
        return None
