"""Where the bytes come from: three small sources with one job, filling a target.

- `DirectSource`: each datafile over IDS HTTP as a raw file with the functional account's session
  (`getData?sessionId&datafileIds=N`), several in parallel, resumed with `Range`.
- `PreparedZipSource`: the prepared zip stream (`getData?preparedId`), unzipped while it streams;
  for facilities whose functional account may not read the data. A broken zip stream restarts
  from byte 0 (a regenerated zip cannot be resumed safely, wire reference §1.4).
- `StorageSource`: the IDS main storage mounted or reachable as an fsspec URL, copied by
  `Datafile.location`, hard-linked when source and target share a local filesystem.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext, suppress
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import unquote_plus, urlparse

from fsspec.core import url_to_fs

from pollcat.catalog import DatafileInfo
from pollcat.entryfeed import EntryFeed
from pollcat.errors import (
    DeliveryLocked,
    NotReady,
    PermanentError,
    PollcatError,
    TargetUnavailable,
    TransientError,
    VerificationError,
)
from pollcat.ids import IdsGateway
from pollcat.storage import link_or_copy
from pollcat.targetfs import TargetFS
from pollcat.transfer import (
    FileJob,
    FileResult,
    PlaceGuard,
    is_connection_loss,
    place_staged,
    run_file_jobs,
    stage_stream_entry,
    synced_once,
    write_file,
)
from pollcat.unzip import iter_entries

log = logging.getLogger("pollcat.sources")
ZIP_RESTARTS = 3

#: Takes one slot of the named limit for as long as the context lasts.
SlotFactory = Callable[[str], AbstractContextManager[Any]]

#: The slot factory of this context: `nullcontext` (no limits) unless a flow installed Prefect's
#: global concurrency limits (pollcat.flows.slots). A contextvar, so that this module and the
#: pipeline stay free of Prefect and the CLI runs unchanged.
SLOTS: ContextVar[SlotFactory] = ContextVar("pollcat_slots", default=nullcontext)


def ids_limit_name(ids_url: str) -> str:
    """The global limit on simultaneous getData streams from one IDS, shared by every facility
    block and worker that talks to it: `pollcat-ids-<host:port>`."""
    parsed = urlparse(ids_url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return f"pollcat-ids-{parsed.hostname}:{port}"


def target_limit_name(facility: str, transport: str) -> str:
    """The global limit on files written at once to one facility's target of one transport."""
    return f"pollcat-target-{facility}-{transport}"


@dataclass
class TransferContext:
    """What a source needs to fill one download's directory.

    `target` is the no-follow target layer, `staging` the download's pollcat-owned staging
    directory (root-relative) and `before_place` the claim check run before each placement.
    """

    download_id: int
    prepared_id: str
    ids: IdsGateway
    session_id: Callable[[], str]
    target: TargetFS
    staging: str
    concurrency: int
    on_progress: Callable[[int], None] | None = None
    before_place: PlaceGuard | None = None
    #: the target's limit name (target_limit_name); None: files are written without a slot
    target_slot: str | None = None
    slot: SlotFactory = field(default_factory=SLOTS.get)

    def ids_stream(self) -> AbstractContextManager[Any]:
        """One slot of this IDS's stream limit, around one getData body (none for a gateway
        without a base URL: a test double)."""
        url = getattr(self.ids, "base_url", None)
        return self.slot(ids_limit_name(url)) if url else nullcontext()

    def target_write(self) -> AbstractContextManager[Any]:
        """One slot of the target's writer limit, around one file written."""
        return self.slot(self.target_slot) if self.target_slot else nullcontext()


class Source:
    name = "abstract"

    def transfer(self, ctx: TransferContext, jobs: list[FileJob],
                 infos: dict[int, DatafileInfo]) -> list[FileResult | BaseException]:
        """Fill the target; one result or error per job, in job order."""
        raise NotImplementedError


class DirectSource(Source):
    name = "direct"

    def transfer(self, ctx, jobs, infos):
        for job in jobs:
            job.open = _opener(ctx, job.datafile_id)

        def one(job: FileJob) -> FileResult:
            # always the IDS slot first, then the target's: no two workers wait on each other
            with ctx.ids_stream(), ctx.target_write():
                return write_file(ctx.target, job, staging=ctx.staging,
                                  on_progress=ctx.on_progress, before_place=ctx.before_place)
        return run_file_jobs(ctx.target, jobs, one, concurrency=ctx.concurrency)


def _opener(ctx: TransferContext, datafile_id: int):
    def open_at(offset: int):
        return ctx.ids.get_datafile(ctx.session_id(), datafile_id, offset)
    return open_at


class StorageSource(Source):
    name = "storage"

    def __init__(self, storage_url: str, storage_options: dict | None = None,
                 hardlink: bool = True):
        self.src_fs, self.src_root = url_to_fs(storage_url, **(storage_options or {}))
        self.hardlink = hardlink

    def transfer(self, ctx, jobs, infos):
        def one(job: FileJob) -> FileResult:
            location = infos[job.datafile_id].location
            if not location:
                raise PermanentError("datafile has no location in ICAT", datafile=job.name)
            src = self.src_root.rstrip("/") + "/" + _strip_digest(location)
            with ctx.target_write():
                return link_or_copy(self.src_fs, src, ctx.target, job, staging=ctx.staging,
                                    hardlink=self.hardlink, on_progress=ctx.on_progress,
                                    before_place=ctx.before_place)
        return run_file_jobs(ctx.target, jobs, one, concurrency=ctx.concurrency)


def _strip_digest(location: str) -> str:
    """The IDS may append `" <digest>"` to a location when its `key` is set (§3.4)."""
    return location.split(" ", 1)[0].lstrip("/")


class PreparedZipSource(Source):
    name = "prepared-zip"

    def transfer(self, ctx, jobs, infos):
        by_path = {}
        by_name: dict[str, list[FileJob]] = {}
        for job in jobs:
            info = infos[job.datafile_id]
            by_path[(info.investigation, info.visit, info.dataset, job.name)] = job
            by_name.setdefault(job.name, []).append(job)
        results: dict[int, FileResult | BaseException] = {}
        last_error: BaseException | None = None
        for attempt in range(1, ZIP_RESTARTS + 1):
            try:
                with ctx.ids_stream(), synced_once(ctx.target):  # one zip body per pass
                    self._one_pass(ctx, by_path, by_name, results)
                last_error = None
                break
            except (TransientError, NotReady, DeliveryLocked) as exc:
                last_error = exc
                if not _worth_restarting(exc):
                    break  # a service answer (503 not online) or the target: no tight loop
                log.warning("download %s: zip stream broke (attempt %d/%d): %s; restarting "
                            "from byte 0", ctx.download_id, attempt, ZIP_RESTARTS, exc)
        out: list[FileResult | BaseException] = []
        for job in jobs:
            if job.datafile_id in results:
                out.append(results[job.datafile_id])
            else:
                out.append(last_error or PermanentError(
                    "the prepared zip did not contain this datafile", datafile=job.name))
        return out

    def _one_pass(self, ctx, by_path, by_name, results) -> None:
        """Read the zip in this thread; stage each entry on a second thread (`EntryFeed`) and
        verify and place it on a third, so the socket is read while entries are written."""
        resp = ctx.ids.get_prepared(ctx.prepared_id)
        pending: deque[tuple[FileJob, Future]] = deque()
        try:
            with ThreadPoolExecutor(1, thread_name_prefix="pollcat-place") as placer, \
                    ThreadPoolExecutor(1, thread_name_prefix="pollcat-stage") as stager:
                try:
                    self._read(ctx, iter_entries(resp.read), by_path, by_name, results,
                               pending, stager, placer)
                except BaseException:
                    with suppress(PollcatError):  # the error that ended the reading is raised
                        _settle(ctx, results, pending, keep=0)  # what was placed counts
                    raise
                _settle(ctx, results, pending, keep=0)
        finally:
            resp.close()

    def _read(self, ctx, entries, by_path, by_name, results, pending: deque,
              stager: ThreadPoolExecutor, placer: ThreadPoolExecutor) -> None:
        started: set[int] = set()  # one part file per datafile: a repeated entry is skipped
        for entry in entries:
            job = _match_entry(entry.name, by_path, by_name)
            if (job is None or job.datafile_id in started
                    or isinstance(results.get(job.datafile_id), FileResult)):
                entry.skip()
                continue
            started.add(job.datafile_id)
            feed = EntryFeed()
            pending.append((job, stager.submit(_stage_entry, ctx, job, feed, placer)))
            try:
                for data in entry.iter_chunks():
                    feed.put(data)
            except BaseException as exc:
                feed.fail(exc)
                raise
            feed.end(entry.crc32)
            _settle(ctx, results, pending, keep=PLACING_AHEAD)


def _stage_entry(ctx, job: FileJob, feed: EntryFeed, placer: ThreadPoolExecutor
                 ) -> FileResult | Future[FileResult]:
    """Write one entry's part file from its feed, then queue its verification and placement
    (with the CRC32 the zip declares, known once the entry was read)."""
    try:
        with ctx.target_write():
            staged = stage_stream_entry(ctx.target, job, feed, staging=ctx.staging,
                                        overlap=False)
    finally:
        feed.drain()
    if isinstance(staged, FileResult):
        return staged
    staged = replace(staged, declared_crc=feed.declared_crc)
    return placer.submit(place_staged, ctx.target, staged, ctx.before_place)


#: Entries of a zip stream staged, verified and placed on other threads while the next ones
#: are read.
PLACING_AHEAD = 2


def _settle(ctx, results, placing: deque, keep: int) -> None:
    """Collect finished entries, waiting for the oldest while more than `keep` are left.

    A failure that ends the pass is raised only once every entry still in flight has finished
    and been recorded: a file placed meanwhile counts (the next pass would only find it again).
    """
    ending: PollcatError | None = None
    while placing and (ending or len(placing) > keep or placing[0][1].done()):
        job, future = placing.popleft()
        try:
            result = future.result()
            if isinstance(result, Future):  # staged: its placement
                result = result.result()
            _record(ctx, results, job, result)
        except PollcatError as exc:
            if _ends_the_pass(exc):
                ending = ending or exc
            else:
                results[job.datafile_id] = exc
    if ending:
        raise ending


def _record(ctx, results, job: FileJob, result: FileResult) -> None:
    results[job.datafile_id] = result
    if ctx.on_progress:
        ctx.on_progress(job.size)


def _ends_the_pass(exc: PollcatError) -> bool:
    """A failure that ends the pass (the zip is fetched again); the others (an unsafe name, a
    refused target path) are that file's result."""
    return isinstance(exc, TransientError | NotReady | DeliveryLocked)


def _worth_restarting(exc: PollcatError) -> bool:
    """A lost connection or bytes that failed verification: fetch the zip again. Not a
    service's answer (503 data not online), a full target or a lost claim."""
    if isinstance(exc, TargetUnavailable | DeliveryLocked | NotReady):
        return False
    return isinstance(exc, VerificationError) or is_connection_loss(exc)


def _match_entry(entry_name: str, by_path, by_name) -> FileJob | None:
    """Undo the standard ZipMapper (`ids/<fac>/<inv>/<visit>/<ds>/<datafile name>`)."""
    parts = entry_name.split("/", 5)
    if len(parts) == 6 and parts[0] == "ids":
        key = (unquote_plus(parts[2]), unquote_plus(parts[3]), unquote_plus(parts[4]), parts[5])
        if key in by_path:
            return by_path[key]
        name = parts[5]
    else:
        name = entry_name
    candidates = by_name.get(name, [])
    return candidates[0] if len(candidates) == 1 else None


def make_source(kind: str, *, storage_url: str | None = None,
                storage_options: dict | None = None, hardlink: bool = True) -> Source:
    if kind == "direct":
        return DirectSource()
    if kind == "prepared-zip":
        return PreparedZipSource()
    if kind == "storage":
        assert storage_url
        return StorageSource(storage_url, storage_options, hardlink)
    raise ValueError(f"unknown source {kind!r}")
