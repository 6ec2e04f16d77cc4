"""Delivery from IDS main storage mounted (or reachable) as a filesystem.

When main storage and the target are local and on one device, a verified source is hard-linked
into the staging directory and placed like any part file: no bytes are copied. Otherwise the file
is stream-copied with the part-file rules of `transfer.write_file`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from pollcat.errors import PollcatError
from pollcat.targetfs import STAGING_NAME, LocalTarget, TargetFS, is_local, target_errors
from pollcat.transfer import (
    DEFAULT_CHUNK,
    DEFAULT_REOPEN,
    FileJob,
    FileResult,
    PlaceGuard,
    Readable,
    Reopen,
    check_bytes,
    crc_of,
    part_path,
    verify_and_place,
    write_file,
)

log = logging.getLogger(__name__)


def _file_opener(src_fs: Any, src_path: str) -> Callable[[int], Readable]:
    def open_at(offset: int) -> Readable:
        f = src_fs.open(src_path, "rb")
        if offset:
            f.seek(offset)
        return f

    return open_at


def _try_link(src_path: str, target: LocalTarget, job: FileJob, staging: str,
              before_place: PlaceGuard | None) -> FileResult | None:
    """Hard-link a verified source into place; None when linking is not possible here."""
    started = time.monotonic()
    with target_errors(target.path(job.rel_path), job.name):
        target.make_dirs(os.path.dirname(job.rel_path))
        target.make_private_dir(staging)
        try:
            same_device = os.stat(src_path).st_dev == target.device(staging)
        except OSError:
            return None
    if not same_device:
        return None
    with open(src_path, "rb") as f:
        size, crc = crc_of(f, DEFAULT_CHUNK)
    check_bytes(job, size, crc)  # the mounted main storage itself is wrong: copying won't help
    if _same_inode(target, job.rel_path, os.stat(src_path)):
        return FileResult(job.datafile_id, job.rel_path, size, time.monotonic() - started,
                          crc, skipped=True)
    part = part_path(staging, job)
    target.remove_quietly(part)
    try:
        target.link_from(src_path, part)
    except PollcatError as exc:  # EXDEV, EPERM (protected_hardlinks), EMLINK, no link support
        log.info("cannot hard-link %s (%s): copying", src_path, exc)
        return None
    crc = verify_and_place(target, part, job, size, crc, before_place)
    return FileResult(job.datafile_id, job.rel_path, size, time.monotonic() - started, crc)


def _same_inode(target: LocalTarget, rel: str, src: os.stat_result) -> bool:
    f = target.open_read(rel)
    if f is None:
        return False
    with f:
        st = os.fstat(f.fileno())
    return (st.st_dev, st.st_ino) == (src.st_dev, src.st_ino)


def link_or_copy(src_fs: Any, src_path: str, target: TargetFS, job: FileJob, *,
                 staging: str = STAGING_NAME, hardlink: bool = True,
                 chunk: int = DEFAULT_CHUNK, reopen: Reopen = DEFAULT_REOPEN,
                 on_progress: Callable[[int], None] | None = None,
                 before_place: PlaceGuard | None = None) -> FileResult:
    """Deliver a file from IDS main storage mounted as a filesystem.

    When both sides are local and on one device, the source is verified and hard-linked (no
    bytes copied). Beware: a hard link shares the inode, so its owner and mode are main
    storage's, and anything that later chowns/chmods or edits the delivered file changes the
    archive copy too; pass `hardlink=False` where users get write access. Otherwise the file is
    stream-copied with `write_file` semantics.
    """
    if hardlink and is_local(src_fs) and isinstance(target, LocalTarget):
        linked = _try_link(src_path, target, job, staging, before_place)
        if linked is not None:
            return linked
    job = replace(job, open=_file_opener(src_fs, src_path))
    return write_file(target, job, staging=staging, chunk=chunk, reopen=reopen,
                      on_progress=on_progress, before_place=before_place)

