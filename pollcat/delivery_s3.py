"""One download onto an S3 target (`s3://bucket/prefix`): the same plan and verification as any
target, with the object store's own way of never showing a partial file.

Object stores cannot rename, so there is no part file and no claim directory: each datafile is
a multipart upload that is completed only after its size and CRC32 matched ICAT (aborted
otherwise), so an object under a final key is always verified (`pollcat.s3target`). Two workers
writing the same download write the same verified objects; the shared SQL ledger's lease keeps
them apart in the first place. The manifest is one PUT written last, and the user gets a
presigned URL to it (at most 7 days) as TopCAT's `customValue`. Retention (`pollcat cleanup`)
removes the objects the manifest lists, then the manifest (`S3Target.remove_delivery`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from pollcat.catalog import DatafileInfo
from pollcat.config import TargetConfig
from pollcat.errors import ConfigurationError
from pollcat.facility import FacilityClients
from pollcat.layout import download_template, map_user, render_path
from pollcat.manifest import MANIFEST_NAME, Manifest, manifest_files, utc_now
from pollcat.topcat import Download
from pollcat.transfer import FileJob, FileResult, run_jobs

log = logging.getLogger("pollcat.delivery")


def is_object_store(target: TargetConfig) -> bool:
    return urlparse(target.url).scheme in ("s3", "s3a")


def s3_settings(target: TargetConfig) -> Any:
    """`S3Settings` from `s3://bucket/prefix` and the target's storage options (s3fs names:
    `key`, `secret`, `endpoint_url`, `client_kwargs.region_name`)."""
    try:
        from pollcat.s3target import S3Settings
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise ConfigurationError(
            f"an S3 target needs s3fs: pip install 'pollcat[s3]' ({exc})") from None
    url = urlparse(target.url)
    opts = dict(target.storage_options)
    client = dict(opts.get("client_kwargs") or {})
    return S3Settings(
        bucket=url.netloc, prefix=url.path.strip("/"),
        endpoint_url=opts.get("endpoint_url") or client.get("endpoint_url"),
        access_key_id=opts.get("key"), secret_access_key=opts.get("secret"),
        region=client.get("region_name") or opts.get("region"),
        addressing_style=opts.get("addressing_style", "auto"))


@dataclass
class ObjectStorePlan:
    """The parts of a delivery plan the pipeline reads (download dir, jobs, target)."""

    download: Download
    target: TargetConfig
    download_dir: str
    root: str = ""
    jobs: list[FileJob] = field(default_factory=list)
    infos: dict[int, DatafileInfo] = field(default_factory=dict)
    link: str | None = None

    def release(self) -> None:  # nothing is claimed on an object store
        pass


def deliver_to_object_store(d: Download, target: TargetConfig, facility: str,
                            clients: FacilityClients, prepared_id: str,
                            on_progress: Callable[[int, int], None] | None = None, *,
                            on_plan: Callable[[ObjectStorePlan], None] | None = None
                            ) -> tuple[ObjectStorePlan, list[FileResult]]:
    """Every datafile as a verified object, then the manifest, then a presigned link to it.

    `on_plan` is told the plan (its download directory) before any byte is sent. Each
    (re)delivery first aborts the multipart uploads an earlier, killed attempt left under the
    download's prefix (the SQL ledger's lease means no other worker writes it now)."""
    from pollcat.delivery import plan_jobs, raise_first_failure
    from pollcat.s3target import S3Target

    store = S3Target(s3_settings(target))
    fields = {"user": map_user(d.user_name, target.user_rule, target.user_map),
              "download": d.file_name, "download_id": str(d.id), "facility": facility,
              "transport": d.transport}
    plan = ObjectStorePlan(d, target, render_path(download_template(target.layout), fields))
    plan.jobs, plan.infos = plan_jobs(d, target, plan.download_dir, fields, clients,
                                      prepared_id)
    if on_plan is not None:
        on_plan(plan)
    aborted = store.abort_incomplete_uploads(plan.download_dir)
    if aborted:
        log.info("download %s: aborted %d incomplete upload(s) of an earlier attempt", d.id,
                 len(aborted))
    ids = clients.ids_for(d.transport)
    total, done = sum(j.size for j in plan.jobs), [0]

    def one(job: FileJob) -> FileResult:
        job.open = lambda offset, i=job.datafile_id: ids.get_datafile(
            clients.icat.session_id(), i, offset)
        result = store.deliver(job, download_id=d.id)
        done[0] += job.size
        if on_progress:
            on_progress(done[0], total)
        return result

    results = run_jobs(plan.jobs, one, concurrency=target.concurrency)
    raise_first_failure(d.id, plan.jobs, results)
    ok = [r for r in results if isinstance(r, FileResult)]
    manifest = Manifest(facility=facility, download_id=d.id, file_name=d.file_name,
                        user=d.user_name, transport=d.transport,
                        completed_at=utc_now(),
                        dir=plan.download_dir,
                        files=manifest_files(plan.jobs, plan.download_dir, ok))
    key = f"{plan.download_dir}/{MANIFEST_NAME}"
    store.write_bytes(key, json.dumps(manifest.to_json(), indent=1).encode())
    plan.link = store.presigned_url(key)
    log.info("download %s: %d object(s) under s3://%s/%s", d.id, len(ok),
             store.settings.bucket, store.key_for(plan.download_dir))
    return plan, ok
