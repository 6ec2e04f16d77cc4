"""The per-file engine: put one datafile on a target, verified, resumably, exactly once.

Discipline for every file, whatever the source:

* the bytes go to a part file named after the datafile *id* (`<id>.pollcat-part`) in the
  download's pollcat-owned staging directory (`targetfs.STAGING_NAME`), so a part name can never
  be another datafile's name, and nobody else can write into it;
* only a part whose size and CRC32 match ICAT is placed, by one atomic rename over the final
  name, so a final name on a target always means "verified". On local targets the CRC32 that
  decides is read back from the part file itself just before the rename;
* a final file that already matches is left alone (a rerun costs a read, not a download), and a
  wrong one is replaced by the rename, so reruns never make `_2` copies;
* a broken connection reopens the source at the current offset (HTTP `Range`) after a short
  backoff, and a part file left by a crashed run is continued. An *answer* from the service
  (503 "data not online", 5xx) is not a broken connection: it is raised at once, keeping the
  part file, so the download waits instead of hammering the IDS;
* a full, over-quota or read-only target (`TargetUnavailable`) removes the attempt's part file;
* every path goes through `targetfs`, which never follows a link below the target root.

Many files run in one task with a bounded thread pool (`run_jobs`): a task per file would mean
thousands of Prefect task runs for one download.
"""

from __future__ import annotations

import http.client
import logging
import posixpath
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import IO, Protocol, TypeVar

from pollcat import backoff
from pollcat.crcread import crc32, crc_of_file
from pollcat.errors import (
    ChecksumMismatch,
    PermanentError,
    PollcatError,
    ResumeNotSupported,
    SizeMismatch,
    TargetUnavailable,
    TransientError,
    TruncatedStream,
    VerificationError,
)
from pollcat.layout import check_relpath
from pollcat.overlap import overlapped
from pollcat.targetfs import STAGING_NAME, TargetFS, fsync, target_errors
from pollcat.targetfs.writeback import Writeback

log = logging.getLogger(__name__)

PART_SUFFIX = ".pollcat-part"
DEFAULT_CHUNK = 1 << 20
#: Size of each write call. The page-cache copy of large calls stalls when the memory it lands
#: on must first be backed again by a VM's host (free page reporting, bench/common.py): a 1 GiB
#: sweep started on idle memory ran at 792-1,062 MB/s with 256 KiB calls and 1,153-1,432 with
#: 128 KiB (6 alternating rounds each, 2026-12-01), and equally fast on memory just freed
#: (1,284 and 1,315 MB/s medians); 2,000 files of 256 KiB were no slower (4.76 s, 4.88 s).
WRITE_SLICE = 128 << 10
#: Files at least this large are written on a second thread while the source is read; below
#: it a thread costs more than the overlap gains.
OVERLAP_MIN = 8 << 20

try:  # a raw urllib3 body (requests' `resp.raw`) raises these, which are not OSErrors
    from urllib3.exceptions import HTTPError as _Urllib3Error
except ImportError:  # pragma: no cover
    _Urllib3Error = OSError  # type: ignore[assignment,misc]

#: Errors from the source that mean "the connection broke": reopen at the current offset.
#: pollcat's own TransientErrors count only when they carry no HTTP status (see `_is_broken`).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError, http.client.HTTPException, _Urllib3Error)


class Readable(Protocol):
    """A source opened at an offset: an HTTP response body, a file."""

    def read(self, n: int, /) -> bytes: ...

    def close(self) -> None: ...


@dataclass
class FileJob:
    """One datafile to deliver.

    `checksum` is ICAT's `Datafile.checksum`: lower-case hex CRC32 without zero padding (Java
    `Long.toHexString`), so it is compared as a number. `open(offset)` must return a Readable that
    starts exactly at `offset`, or raise ResumeNotSupported (the server ignored `Range`).
    """

    datafile_id: int
    name: str
    rel_path: str
    size: int
    checksum: str | None = None
    open: Callable[[int], Readable] | None = None
    #: ICAT cannot vouch for this file (no CRC32): its bytes come from a stream that carries
    #: its own integrity data (the prepared zip's entry size and CRC32, checked while
    #: unzipping), so ICAT's possibly stale or zero `fileSize` is not compared.
    trust_stream: bool = False


@dataclass
class FileResult:
    """What happened to one file.

    `bytes` is the delivered file's size; `fetched` the bytes written by this call (0 when
    skipped or hard-linked, less than `bytes` after resuming a part file). `resumed` counts
    reopenings of the source after the first open, plus one for continuing a part file.
    """

    datafile_id: int
    rel_path: str
    bytes: int
    seconds: float
    crc32: int
    skipped: bool = False
    resumed: int = 0
    fetched: int = 0


@dataclass(frozen=True)
class Reopen:
    """How often, and how patiently, a broken connection is reopened within one attempt.

    The delay doubles from `first_delay_s` up to `max_delay_s`: a flapping link gets time to
    recover, and the IDS is not hit in a tight loop. Beyond `max_resumes` the attempt gives up
    (the part file is kept for the next sweep).
    """

    max_resumes: int = 5
    first_delay_s: float = 0.5
    max_delay_s: float = 15.0

    def delay(self, reopening: int) -> float:
        return backoff.exponential(self.first_delay_s, self.max_delay_s, reopening - 1)


DEFAULT_REOPEN = Reopen()
_sleep = time.sleep  # tests replace this, not the time module

#: Called just before a verified file is placed; raises if this worker may no longer write
#: the download (its claim was taken over).
PlaceGuard = Callable[[], None]


# --- checksums ------------------------------------------------------------------------------


def parse_crc(expected_hex: str | None) -> int | None:
    """ICAT's checksum as a CRC32 number, or None if there is none we can check.

    A value that is not hex or does not fit 32 bits (an MD5 set by some other ingest tool) is
    logged and not checked: the size is still verified, and failing every file of such a
    facility forever would help nobody.
    """
    if expected_hex is None or not expected_hex.strip():
        return None
    text = expected_hex.strip().lower().removeprefix("0x")
    try:
        value = int(text, 16)
    except ValueError:
        value = -1
    if not 0 <= value <= 0xFFFFFFFF:
        log.warning("checksum %r is not a CRC32; only the size is verified", expected_hex)
        return None
    return value


def crc_matches(expected_hex: str | None, crc_int: int) -> bool:
    """Whether ICAT's hex CRC32 equals a computed one (numerically: ICAT drops leading zeros).

    True when there is no CRC32 to compare against (see `parse_crc`).
    """
    expected = parse_crc(expected_hex)
    return expected is None or expected == crc_int


def format_crc(crc_int: int) -> str:
    """A CRC32 written the way ICAT writes it (lower-case hex, no zero padding)."""
    return format(crc_int, "x")


def crc_of(f: IO[bytes], chunk: int = DEFAULT_CHUNK, limit: int | None = None
           ) -> tuple[int, int]:
    """(size, crc32) of an open file, read in `chunk`s (up to `limit` bytes)."""
    crc, size = 0, 0
    while limit is None or size < limit:
        data = f.read(chunk if limit is None else min(chunk, limit - size))
        if not data:
            break
        crc, size = crc32(data, crc), size + len(data)
    return size, crc


def check_bytes(job: FileJob, size: int, crc: int) -> None:
    """SizeMismatch / ChecksumMismatch unless (size, crc) is what ICAT says."""
    if size != job.size and not job.trust_stream:
        raise SizeMismatch(f"got {size} bytes, ICAT says {job.size}", datafile=job.name)
    if not crc_matches(job.checksum, crc):
        raise ChecksumMismatch(f"CRC32 is {format_crc(crc)}, ICAT says {job.checksum}",
                               datafile=job.name)


# --- names ----------------------------------------------------------------------------------


def part_path(staging: str, job: FileJob) -> str:
    """The part file of `job`: named by the datafile id, so it never equals a datafile name."""
    return posixpath.join(staging, f"{job.datafile_id}{PART_SUFFIX}")


class FirstSight:
    """Which names a directory did not hold when this delivery first listed it.

    A fresh delivery of thousands of files would otherwise try to open every final file and
    every part file before writing it (to skip a matching one, to resume a partial one): two
    failed opens per file, each a round trip on SFTP. One listing per directory answers both.
    Each name is answered "absent" once only, so a later attempt at the same file (a restart
    within the sweep) opens it as before. A name that appears after the listing is no risk:
    part files are pollcat's own (private staging, under the claim), and a final name planted
    meanwhile is still checked by the placement, which refuses anything but a regular file and
    otherwise replaces it with the verified bytes, as a mismatching file is replaced.
    """

    def __init__(self, target: TargetFS):
        self.target = target
        self._lock = threading.Lock()
        self._listed: dict[str, set[str]] = {}

    @classmethod
    def of(cls, target: TargetFS) -> FirstSight:
        """The one per target object, that is per delivery."""
        return target.__dict__.setdefault("_first_sight", cls(target))

    def absent(self, rel: str) -> bool:
        parent, name = posixpath.split(rel)
        with self._lock:
            names = self._listed.get(parent)
            if names is None:
                names = self._listed[parent] = set(self.target.list_names(parent))
            if name in names:
                return False
            names.add(name)  # answered once: from now on, open it
            return True


def existing_match(target: TargetFS, job: FileJob, chunk: int = DEFAULT_CHUNK) -> int | None:
    """The CRC of an already delivered, matching final file; None if it must be (re)written.

    Whatever is at the final name that is not a regular file (a link, FIFO, directory) is
    UnsafeTargetPath: it is never read through, and never silently replaced.
    """
    check_relpath(job.rel_path)
    with target_errors(target.path(job.rel_path), job.name):
        if FirstSight.of(target).absent(job.rel_path):
            return None
        f = target.open_read(job.rel_path)
        if f is None:
            return None
        with f:
            size, crc = crc_of(f, chunk)
    if size == job.size and crc_matches(job.checksum, crc):
        return crc
    log.info("replacing %s: size or CRC32 differs from ICAT", target.path(job.rel_path))
    return None


# --- the part writer ------------------------------------------------------------------------


class _SourceBroken(Exception):
    """A read from the source failed: carries the original for the resume decision."""

    def __init__(self, original: BaseException):
        super().__init__(str(original))
        self.original = original


class PartWriter:
    """The part file being written: offset, running CRC, and the open handle.

    Bytes go out in `WRITE_SLICE` slices (large write calls stall in the page-cache copy where
    smaller ones do not). On a target that reads the part back before placing (local), the
    in-memory CRC32 would be computed and then thrown away, so it is not computed
    (`crc_in_memory` False, `crc` stays 0): the decisive CRC is the re-read one. There, early
    writeback (`Writeback`) keeps the final fsync short. Files of at least `OVERLAP_MIN` bytes
    are written on a second thread while the source is read (`overlap.overlapped`).
    """

    def __init__(self, target: TargetFS, part: str, job: FileJob,
                 on_progress: Callable[[int], None] | None):
        self.target, self.part, self.job = target, part, job
        self.on_progress = on_progress
        self.offset, self.crc, self.fetched = 0, 0, 0
        self.out: IO[bytes] | None = None
        self.crc_in_memory = not target.reread_before_place
        self._writeback: Writeback | None = None

    def _errors(self):  # noqa: ANN202 - a context manager
        return target_errors(self.target.path(self.part), self.job.name)

    def _bind(self, out: IO[bytes], offset: int, crc: int) -> None:
        self.out, self.offset, self.crc = out, offset, crc
        self._writeback = None
        if not self.crc_in_memory:
            try:
                self._writeback = Writeback(out.fileno(), offset)
            except (AttributeError, OSError, ValueError):  # no descriptor: fsync does it all
                self._writeback = None

    def start(self, chunk: int) -> bool:
        """Open the part file, continuing a crashed run's bytes when possible; True if so."""
        with self._errors():
            existing = None if FirstSight.of(self.target).absent(self.part) \
                else self.target.open_read(self.part)
            if existing is not None:
                with existing:
                    size, crc = crc_of(existing, chunk, limit=self.job.size + 1)
                if 0 < size <= self.job.size and self._append(size, crc):
                    return True
        self.truncate()
        return False

    def _append(self, size: int, crc: int) -> bool:
        try:
            out = self.target.open_append(self.part)
        except (NotImplementedError, ValueError, OSError) as exc:
            log.info("cannot append to %s (%s): starting again", self.part, exc)
            return False
        if out is None:
            return False
        entry = self.target.lstat(self.part)
        if entry is None or entry.size != size:  # an "append" that truncated; the size
            out.close()                          # check would catch it too, later
            return False
        self._bind(out, size, crc)
        self._progress(size)
        return True

    def truncate(self) -> None:
        """Start the part file from byte 0 (a fresh, exclusively created file)."""
        self.close()
        with self._errors():
            out = self.target.create_replacing(self.part)
        self._progress(-self.offset)
        self._bind(out, 0, 0)

    def _progress(self, delta: int) -> None:
        if self.on_progress is not None and delta:
            self.on_progress(delta)

    def _check_room(self, queued: int, data: bytes) -> None:
        if queued + len(data) > self.job.size and not self.job.trust_stream:
            raise SizeMismatch(f"source sent more than the {self.job.size} bytes ICAT knows",
                               datafile=self.job.name)

    def write(self, data: bytes) -> None:
        self._check_room(self.offset, data)
        self._store(data)

    def _store(self, data: bytes) -> None:
        assert self.out is not None
        with self._errors():
            view = memoryview(data)
            for start in range(0, len(view), WRITE_SLICE):
                self.out.write(view[start:start + WRITE_SLICE])
            if self._writeback is not None:
                self.out.flush()
                self._writeback.advance(self.offset + len(data))
        if self.crc_in_memory:
            self.crc = crc32(data, self.crc)
        self.offset += len(data)
        self.fetched += len(data)
        self._progress(len(data))

    def copy(self, chunks: Iterable[bytes], overlap: bool = True) -> None:
        """Write every chunk; large files on a second thread while the source is read (unless
        the source is read on another thread already: `overlap=False`)."""
        if not overlap or self.job.size - self.offset < OVERLAP_MIN:
            for data in chunks:
                self.write(data)
            return
        queued = self.offset

        def checked() -> Iterator[bytes]:
            nonlocal queued
            for data in chunks:
                self._check_room(queued, data)
                queued += len(data)
                yield data

        overlapped(checked(), self._store)

    def finish(self, keep_open: bool = False) -> IO[bytes] | None:
        """Flush, fsync and close: errors here are the target's. In a batch whose durability
        one `target.sync()` provides (`synced_once`), only flush.

        `keep_open`: on a target that reads the part back before placing, hand the open part
        file to the caller instead of closing it, for `verify_and_place` to read back through:
        the same file (pollcat created it, exclusively, in its private staging directory),
        without walking to it and opening it again for each of thousands of files."""
        with self._errors():
            if self.out is not None:
                if self.target.sync_deferred:
                    self.out.flush()
                    if self._writeback is not None:
                        self._writeback.start_rest()
                else:
                    fsync(self.out)
            if keep_open and self.target.reread_before_place and self.out is not None:
                kept, self.out = self.out, None
                return kept
            self.close()
        return None

    def close(self) -> None:
        out, self.out = self.out, None
        if out is not None:
            try:
                out.close()
            except OSError as exc:  # a full disk may refuse the last flush; reported already
                log.debug("closing %s failed: %s", self.part, exc)


def verify_and_place(target: TargetFS, part: str, job: FileJob, size: int, crc: int,
                     before_place: PlaceGuard | None = None, *,
                     crc_known: bool = True, declared_crc: int | None = None,
                     readback: IO[bytes] | None = None) -> int:
    """Check the part against ICAT, then rename it over the final name; returns its CRC32.

    On a local target the decisive CRC32 is read back from the part file itself (the bytes that
    will be placed), not taken from memory: through `readback` when the writer handed its open
    part file over (closed here, whatever happens), else opened again. `crc_known` False: `crc`
    was not computed (the part writer leaves that to this re-read), so only the size is checked
    before it. `declared_crc`: what the source says the bytes' CRC32 is (a zip entry's),
    checked with the same computed CRC32 as ICAT's checksum. A mismatch deletes the part.
    """
    try:
        crc = _verify(target, part, job, size, crc, crc_known, declared_crc, readback)
        if before_place is not None:
            before_place()
        with target_errors(target.path(job.rel_path), job.name):
            target.place(part, job.rel_path)
        if target.sync_deferred:
            target.note_placed(job.rel_path, readback)  # the target closes it now
            readback = None
    finally:
        if readback is not None:
            with suppress(OSError):  # nothing is buffered: finish() flushed it
                readback.close()
    return crc


def _verify(target: TargetFS, part: str, job: FileJob, size: int, crc: int, crc_known: bool,
            declared_crc: int | None, readback: IO[bytes] | None) -> int:
    """`verify_and_place`'s checks; the decisive CRC32. A mismatch deletes the part."""
    try:
        if crc_known:
            check_bytes(job, size, crc)
        elif size != job.size:
            check_bytes(job, size, 0)
        if target.reread_before_place:
            with target_errors(target.path(part), job.name):
                if readback is not None:
                    size, crc = crc_of_file(readback)
                else:
                    f = target.open_read(part)
                    if f is None:
                        raise TransientError(f"part file {target.path(part)!r} vanished",
                                             datafile=job.name)
                    with f:
                        size, crc = crc_of_file(f)
            check_bytes(job, size, crc)
        if declared_crc is not None and declared_crc != crc:
            raise ChecksumMismatch(
                f"CRC32 {format_crc(crc)} disagrees with the source's {format_crc(declared_crc)}"
                " (the bytes did not arrive as they were sent)", datafile=job.name)
    except VerificationError:
        target.remove_quietly(part)
        raise
    return crc


# --- reading the source ---------------------------------------------------------------------


def is_connection_loss(exc: BaseException) -> bool:
    """Whether a source failure is a lost connection (reopen) rather than an answer (raise).

    A PollcatError that carries an HTTP status is the service answering (503 data not online,
    a 5xx, a 404): reopening at once would only ask again. One without a status is "cannot
    reach" or "stalled", which a reopen may cure.
    """
    if isinstance(exc, (VerificationError, ResumeNotSupported, PermanentError)):
        return False
    if isinstance(exc, PollcatError):
        return isinstance(exc, TransientError) and exc.status is None
    return isinstance(exc, CONNECTION_ERRORS)


def _read_source(src: Readable, chunk: int) -> Iterator[bytes]:
    """The source's bytes; a lost connection becomes _SourceBroken."""
    while True:
        try:
            data = src.read(chunk)
        except Exception as exc:
            if is_connection_loss(exc):
                raise _SourceBroken(exc) from exc
            raise
        if not data:
            return
        yield data


def _close_quietly(src: Readable | None) -> None:
    try:
        if src is not None:
            src.close()
    except Exception as exc:  # a half-dead connection may fail to close; the data is safe
        log.debug("closing the source failed: %s", exc)


def _open_source(job: FileJob, offset: int) -> Readable:
    assert job.open is not None
    try:
        return job.open(offset)
    except Exception as exc:
        if is_connection_loss(exc):
            raise _SourceBroken(exc) from exc
        raise


def _fetch(writer: PartWriter, job: FileJob, chunk: int, reopen: Reopen) -> int:
    """Copy the source into the part file, reopening it (with backoff) on lost connections.

    Returns the number of reopenings. A server that ignores Range costs a restart from byte 0;
    both count against `reopen.max_resumes`.
    """
    reopened = 0
    while True:
        src = None
        try:
            src = _open_source(job, writer.offset)
            began = writer.offset
            writer.copy(_read_source(src, chunk))
            if began < writer.offset < job.size:
                # A clean end before the size ICAT knows, after progress: the connection was
                # cut (http.client returns b"" when a body stops short of Content-Length).
                # Resume; a source that ends there again without progress really is short,
                # and the size check says so.
                raise _SourceBroken(TruncatedStream(
                    f"source ended at byte {writer.offset} of {job.size}", datafile=job.name))
            return reopened
        except ResumeNotSupported as exc:
            if writer.offset == 0:
                raise
            log.info("%s: server ignored Range at %d, restarting", job.name, writer.offset)
            writer.truncate()
            last: BaseException = exc
        except _SourceBroken as broken:
            log.info("%s: connection broke at %d: %s", job.name, writer.offset, broken)
            last = broken.original
        finally:
            _close_quietly(src)
        reopened += 1
        if reopened > reopen.max_resumes:
            raise TransientError(f"connection broke {reopened} times, giving up for now "
                                 f"(the part file is kept): {last}", datafile=job.name) from last
        _sleep(reopen.delay(reopened))


# --- one file -------------------------------------------------------------------------------


def _skipped(job: FileJob, started: float, crc: int) -> FileResult:
    return FileResult(job.datafile_id, job.rel_path, job.size, time.monotonic() - started,
                      crc, skipped=True)


def _prepare_dirs(target: TargetFS, job: FileJob, staging: str) -> None:
    """The file's directory and the staging directory, made once per target (per download):
    every later operation still walks them without following links, and placement makes the
    file's directory again, so a directory removed meanwhile only fails this file's attempt."""
    made = target.__dict__.setdefault("_made_dirs", set())
    wanted = (posixpath.dirname(job.rel_path), staging)
    if wanted in made:
        return
    with target_errors(target.path(job.rel_path), job.name):
        target.make_dirs(wanted[0])
        target.make_private_dir(staging)
    made.add(wanted)


def write_file(target: TargetFS, job: FileJob, *, staging: str = STAGING_NAME,
               chunk: int = DEFAULT_CHUNK, reopen: Reopen = DEFAULT_REOPEN,
               on_progress: Callable[[int], None] | None = None,
               before_place: PlaceGuard | None = None) -> FileResult:
    """Deliver one datafile from `job.open` to `job.rel_path` on `target`, verified.

    `staging` is the root-relative staging directory (the download's `.pollcat`). Progress
    `on_progress(delta)` gets the bytes written (negative when a restart drops bytes).
    Raises SizeMismatch/ChecksumMismatch (part deleted), UnsafeTargetPath (something planted),
    TargetUnavailable (full/read-only; part deleted), TargetError (target refuses), the source's
    own answer (e.g. NotReady for 503; part kept) or TransientError (connection kept breaking;
    part kept for the next attempt).
    """
    started = time.monotonic()
    crc = existing_match(target, job, chunk)
    if crc is not None:
        return _skipped(job, started, crc)
    if job.open is None:
        raise ValueError(f"job for {job.name!r} has no source to open")
    _prepare_dirs(target, job, staging)
    part = part_path(staging, job)
    writer = PartWriter(target, part, job, on_progress)
    try:
        resumed = int(writer.start(chunk))
        resumed += _fetch(writer, job, chunk, reopen)
        readback = writer.finish(keep_open=True)
    except (VerificationError, TargetUnavailable):  # useless bytes / give the space back
        writer.close()
        target.remove_quietly(part)
        raise
    finally:
        writer.close()
    crc = verify_and_place(target, part, job, writer.offset, writer.crc, before_place,
                           crc_known=writer.crc_in_memory, readback=readback)
    return FileResult(job.datafile_id, job.rel_path, writer.offset,
                      time.monotonic() - started, crc, resumed=resumed, fetched=writer.fetched)


def write_stream_entry(target: TargetFS, job: FileJob, chunks: Iterable[bytes], *,
                       staging: str = STAGING_NAME,
                       before_place: PlaceGuard | None = None) -> FileResult:
    """Deliver bytes that arrive as an iterable (a zip entry): same part/verify/place rules.

    There is no resume: a zip cannot be reopened mid-entry. If the final file already matches,
    `chunks` is not consumed (the zip reader drains an entry when it moves on). Any failure
    deletes the part file.
    """
    staged = stage_stream_entry(target, job, chunks, staging=staging)
    return staged if isinstance(staged, FileResult) else place_staged(target, staged,
                                                                      before_place)


@dataclass(frozen=True)
class StagedEntry:
    """A stream entry written to its part file, not yet verified and placed."""

    job: FileJob
    part: str
    size: int
    crc: int
    crc_known: bool
    started: float
    declared_crc: int | None = None  # the zip's CRC32 of the entry, known once it is read


def stage_stream_entry(target: TargetFS, job: FileJob, chunks: Iterable[bytes], *,
                       staging: str = STAGING_NAME, overlap: bool = True
                       ) -> FileResult | StagedEntry:
    """The first half of `write_stream_entry`: the entry's bytes in its part file (a
    FileResult when the final file already matches). A stream source places entry N with
    `place_staged` while it reads entry N+1: the read-back CRC32 is off the stream's path."""
    started = time.monotonic()
    crc = existing_match(target, job)
    if crc is not None:
        return _skipped(job, started, crc)
    _prepare_dirs(target, job, staging)
    part = part_path(staging, job)
    writer = PartWriter(target, part, job, None)
    try:
        writer.truncate()
        writer.copy(chunks, overlap)
        writer.finish()
    except BaseException:
        writer.close()
        target.remove_quietly(part)
        raise
    return StagedEntry(job, part, writer.offset, writer.crc, writer.crc_in_memory, started)


def place_staged(target: TargetFS, staged: StagedEntry,
                 before_place: PlaceGuard | None = None) -> FileResult:
    """Verify a staged entry against ICAT and place it (the part is deleted on a mismatch)."""
    crc = verify_and_place(target, staged.part, staged.job, staged.size, staged.crc,
                           before_place, crc_known=staged.crc_known,
                           declared_crc=staged.declared_crc)
    return FileResult(staged.job.datafile_id, staged.job.rel_path, staged.size,
                      time.monotonic() - staged.started, crc, fetched=staged.size)


# --- many files -----------------------------------------------------------------------------

J = TypeVar("J")
R = TypeVar("R")


@contextmanager
def synced_once(target: TargetFS) -> Iterator[None]:
    """Write a batch of files with one `target.sync()` at the end instead of an fsync each.

    Per-file fsyncs of 2,000 small files cost one journal commit each, one after the other in
    each worker; the batch starts each file's writeback when it is written and fsyncs them all
    together at the end. Placement without them
    is still verified and atomic; a crash before the sync can leave a placed file whose bytes
    are not on disk, which the next run's CRC32 check of the final name replaces (there is no
    manifest yet: it is written after this returns, so it never claims unsynced bytes). If the
    sync fails, the error propagates and no manifest is written.
    """
    if type(target).sync is TargetFS.sync:  # cannot sync in one call: fsync each file
        yield
        return
    target.sync_deferred = True
    try:
        yield
    finally:
        target.sync_deferred = False
    with target_errors(target.root):
        target.sync()


def run_file_jobs(target: TargetFS, jobs: Sequence[J], fn: Callable[[J], R], *,
                  concurrency: int) -> list[R | BaseException]:
    """`run_jobs` for jobs writing onto `target`, made durable by one sync (`synced_once`)."""
    with synced_once(target):
        return run_jobs(jobs, fn, concurrency=concurrency)

def run_jobs(jobs: Sequence[J], fn: Callable[[J], R], *, concurrency: int
             ) -> list[R | BaseException]:
    """Run `fn(job)` for every job on at most `concurrency` threads; results in job order.

    A failing file does not stop the others: its exception takes its place in the list (with
    the datafile filled in when it is a PollcatError). KeyboardInterrupt and SystemExit are not
    swallowed.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if not jobs:
        return []
    results: list[R | BaseException] = []
    with ThreadPoolExecutor(max_workers=min(concurrency, len(jobs)),
                            thread_name_prefix="pollcat-file") as pool:
        futures = [pool.submit(fn, job) for job in jobs]
        for job, future in zip(jobs, futures, strict=True):
            try:
                results.append(future.result())
            except Exception as exc:
                if isinstance(exc, PollcatError):
                    exc.with_context(datafile=getattr(job, "name", None))
                results.append(exc)
    return results
