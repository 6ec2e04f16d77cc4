"""The per-file engine: put one datafile on a target, verified, resumably, exactly once.

Discipline for every file, whatever the source:

* the bytes go to `.<name>.pollcat-part` in the final directory, and only a file whose size and
  CRC32 match ICAT is renamed into place, so a final name on a target always means "verified";
* a final file that already matches is left alone (a rerun costs a read, not a download), and a
  wrong one is removed before the rename, so reruns never make `_2` copies;
* a broken connection reopens the source at the current offset (HTTP `Range`), and a part file
  left by a crashed run is continued, so a 2 TB file is not fetched twice for one network hiccup;
* every path goes through `layout.join_under`, so nothing is written outside the target root.

Many files run in one task with a bounded thread pool (`run_jobs`): a task per file would mean
thousands of Prefect task runs for one download.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import logging
import os
import posixpath
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from pollcat.errors import (
    ChecksumMismatch,
    PollcatError,
    ResumeNotSupported,
    SizeMismatch,
    TargetError,
    TransientError,
    TruncatedStream,
    VerificationError,
)
from pollcat.layout import NAME_MAX, join_under

log = logging.getLogger(__name__)

PART_SUFFIX = ".pollcat-part"
DEFAULT_CHUNK = 1 << 20

try:  # a raw urllib3 body (requests' `resp.raw`) raises these, which are not OSErrors
    from urllib3.exceptions import HTTPError as _Urllib3Error
except ImportError:  # pragma: no cover
    _Urllib3Error = OSError  # type: ignore[assignment,misc]

#: Errors from the source that mean "the connection broke": reopen at the current offset.
BROKEN_CONNECTION: tuple[type[BaseException], ...] = (
    OSError, http.client.HTTPException, _Urllib3Error, TransientError)

#: errno values that mean the target itself refuses (retrying will not help).
_TARGET_REFUSALS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                    errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.EFBIG}


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


# --- small helpers --------------------------------------------------------------------------


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


def is_local(fs: Any) -> bool:
    """Whether an fsspec filesystem is the local one (symlinks and hard links apply)."""
    protocol = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def part_name(final: str) -> str:
    """`dir/.name.pollcat-part`, hashed if the name would get too long for the filesystem."""
    parent, base = posixpath.split(final)
    name = f".{base}{PART_SUFFIX}"
    if len(name.encode("utf-8", "surrogatepass")) > NAME_MAX:
        digest = hashlib.sha256(base.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        name = f".{digest}{PART_SUFFIX}"
    return posixpath.join(parent, name)


def _paths(fs: Any, root: str, job: FileJob) -> tuple[str, str]:
    final = join_under(root, job.rel_path, local=is_local(fs))
    return final, part_name(final)


#: SFTP status codes (draft-ietf-secsh-filexfer) → errno. OpenSSH speaks SFTP v3, where every
#: errno but ENOENT/EACCES/EPERM becomes the generic FX_FAILURE (4), see `_sftp_errno`.
_SFTP_ERRNO = {2: errno.ENOENT, 3: errno.EACCES, 10: errno.ENOENT, 11: errno.EEXIST,
               12: errno.EROFS, 14: errno.ENOSPC, 15: errno.EDQUOT, 18: errno.ENOTEMPTY,
               19: errno.ENOTDIR, 20: errno.EINVAL, 21: errno.ELOOP, 22: errno.EACCES,
               24: errno.EISDIR}


def _sftp_errno(code: int, reason: str) -> int:
    if code in _SFTP_ERRNO:
        return _SFTP_ERRNO[code]
    if code == 4 and reason.endswith("is not a directory"):  # asyncssh's makedirs, SFTP v3
        return errno.ENOTDIR
    if code == 4 and reason.endswith("already exists"):
        return errno.EEXIST
    return errno.EIO  # FX_FAILURE "Failure" may be a full disk or a glitch: retried


def as_os_error(exc: BaseException) -> OSError | None:
    """`exc` as an OSError when it is a filesystem failure; None if it is something else.

    sshfs lets most of asyncssh's SFTP errors through unchanged (only "no such file" becomes
    FileNotFoundError): they carry an SFTP status code, not an errno, and are no OSErrors. A
    lost SSH connection becomes ECONNRESET (transient).
    """
    if isinstance(exc, OSError):
        return exc
    asyncssh = sys.modules.get("asyncssh")  # only loaded when an SFTP target is in use
    if asyncssh is None or not isinstance(exc, asyncssh.Error):
        return None
    reason = str(getattr(exc, "reason", "") or exc)
    if isinstance(exc, asyncssh.SFTPError):
        code = _sftp_errno(exc.code, reason)
    else:  # DisconnectError, ConnectionLost, ChannelOpenError, ...
        code = errno.ECONNRESET
    return OSError(code, reason or os.strerror(code))


def _target_error(exc: OSError, path: str, datafile: str | None) -> PollcatError:
    """Permissions, read-only, full: permanent TargetError; anything else may be a network fs."""
    if isinstance(exc, PermissionError) or exc.errno in _TARGET_REFUSALS:
        return TargetError(f"target refused {path!r}: {exc}", datafile=datafile)
    return TransientError(f"target failed on {path!r}: {exc}", datafile=datafile)


@contextmanager
def target_errors(path: str, datafile: str | None = None) -> Iterator[None]:
    """Turn OSErrors (and SFTP errors, see `as_os_error`) from target operations into
    TargetError (refusals) / TransientError."""
    try:
        yield
    except OSError as exc:
        raise _target_error(exc, path, datafile) from exc
    except Exception as exc:
        os_error = as_os_error(exc)
        if os_error is None:
            raise
        raise _target_error(os_error, path, datafile) from exc


def make_dirs(fs: Any, path: str) -> None:
    """`fs.makedirs(path, exist_ok=True)`, reporting why when a missing parent is refused.

    Over SFTP, asyncssh's makedirs passes over a parent it may not create and then fails on
    the next one with "No such file", which would look transient. Then the first missing
    ancestor is created on its own, so the real refusal ("Permission denied: '<dir>'") shows.
    """
    try:
        fs.makedirs(path, exist_ok=True)
        return
    except FileNotFoundError:
        missing = path
        while (parent := posixpath.dirname(missing)) not in ("", missing) \
                and not fs.exists(parent):
            missing = parent
        try:
            fs.mkdir(missing, create_parents=False)
        except Exception as exc:
            os_error = as_os_error(exc)
            if os_error is None or os_error.errno in (errno.ENOENT, errno.EEXIST):
                raise
            raise OSError(os_error.errno, os_error.strerror, missing) from exc
    fs.makedirs(path, exist_ok=True)  # the parent could be made after all (a race)


def _target(path: str, job: FileJob) -> AbstractContextManager[None]:
    return target_errors(path, job.name)


def _crc_of(fs: Any, path: str, chunk: int, limit: int | None = None) -> tuple[int, int]:
    """(size, crc32) of a file on `fs`, read in `chunk`s (up to `limit` bytes)."""
    crc, size = 0, 0
    with fs.open(path, "rb") as f:
        while limit is None or size < limit:
            data = f.read(chunk if limit is None else min(chunk, limit - size))
            if not data:
                break
            crc, size = zlib.crc32(data, crc), size + len(data)
    return size, crc


def _existing_match(fs: Any, final: str, job: FileJob, chunk: int) -> int | None:
    """The CRC of an already delivered, matching final file; None if it must be (re)written."""
    with _target(final, job):
        if not fs.isfile(final) or fs.size(final) != job.size:
            return None
        size, crc = _crc_of(fs, final, chunk)
    if size == job.size and crc_matches(job.checksum, crc):
        return crc
    log.info("replacing %s: size or CRC32 differs from ICAT", final)
    return None


def _verify(job: FileJob, size: int, crc: int) -> None:
    if size != job.size:
        raise SizeMismatch(f"got {size} bytes, ICAT says {job.size}", datafile=job.name)
    if not crc_matches(job.checksum, crc):
        raise ChecksumMismatch(f"CRC32 is {format_crc(crc)}, ICAT says {job.checksum}",
                               datafile=job.name)


def _remove_quietly(fs: Any, path: str) -> None:
    try:
        if fs.exists(path):
            fs.rm(path)
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc)


def _place(fs: Any, part: str, final: str, job: FileJob) -> None:
    """Rename the verified part over the final name (removing a wrong final file first)."""
    with _target(final, job):
        if fs.isdir(final):
            raise TargetError(f"a directory is in the way at {final!r}", datafile=job.name)
        if fs.exists(final):
            fs.rm(final)
        fs.mv(part, final)


def _fsync(out: Any) -> None:
    """Flush (errors count), then fsync where there is a descriptor, or remotely where the
    file offers it (sshfs: OpenSSH's fsync@openssh.com): the manifest will claim these bytes
    are on disk."""
    out.flush()
    try:
        os.fsync(out.fileno())
        return
    except Exception:  # no fileno on remote/memory files (io.UnsupportedOperation, ...)
        pass
    remote_fsync = getattr(out, "fsync", None)
    if callable(remote_fsync):
        try:
            remote_fsync()
        except Exception as exc:  # a server without the extension: as good as we can do
            log.debug("remote fsync failed: %s", exc)


# --- the streaming writer -------------------------------------------------------------------


class _SourceBroken(Exception):
    """A read from the source failed: carries the original for the resume decision."""

    def __init__(self, original: BaseException):
        super().__init__(str(original))
        self.original = original


class _PartWriter:
    """The part file being written: offset, running CRC, and the open handle."""

    def __init__(self, fs: Any, part: str, job: FileJob,
                 on_progress: Callable[[int], None] | None):
        self.fs, self.part, self.job = fs, part, job
        self.on_progress = on_progress
        self.offset, self.crc, self.fetched = 0, 0, 0
        self.out: Any = None

    def start(self, chunk: int) -> bool:
        """Open the part file, continuing a crashed run's bytes when possible; True if so."""
        with _target(self.part, self.job):
            length = self.fs.size(self.part) if self.fs.isfile(self.part) else 0
            if 0 < length <= self.job.size and self._append(length, chunk):
                return True
            self.truncate()
        return False

    def _append(self, length: int, chunk: int) -> bool:
        size, crc = _crc_of(self.fs, self.part, chunk, limit=length)
        try:
            out = self.fs.open(self.part, "ab")
        except (NotImplementedError, ValueError, OSError) as exc:
            log.info("cannot append to %s (%s): starting again", self.part, exc)
            return False
        if self.fs.size(self.part) != size:  # an "append" that truncated; the size check
            out.close()                      # after the copy would catch it too, later
            return False
        self.out, self.offset, self.crc = out, size, crc
        self._progress(size)
        return True

    def truncate(self) -> None:
        """Start the part file from byte 0."""
        self.close()
        with _target(self.part, self.job):
            self.out = self.fs.open(self.part, "wb")
        self._progress(-self.offset)
        self.offset, self.crc = 0, 0

    def _progress(self, delta: int) -> None:
        if self.on_progress is not None and delta:
            self.on_progress(delta)

    def write(self, data: bytes) -> None:
        if self.offset + len(data) > self.job.size:
            raise SizeMismatch(f"source sent more than the {self.job.size} bytes ICAT knows",
                               datafile=self.job.name)
        with _target(self.part, self.job):
            self.out.write(data)
        self.crc = zlib.crc32(data, self.crc)
        self.offset += len(data)
        self.fetched += len(data)
        self._progress(len(data))

    def copy(self, chunks: Iterable[bytes]) -> None:
        for data in chunks:
            self.write(data)

    def finish(self) -> None:
        """Flush, fsync and close: errors here are the target's."""
        with _target(self.part, self.job):
            _fsync(self.out)
            self.close()

    def close(self) -> None:
        out, self.out = self.out, None
        if out is not None:
            out.close()


def _read_source(src: Readable, chunk: int) -> Iterator[bytes]:
    """The source's bytes; any failure to read becomes _SourceBroken."""
    while True:
        try:
            data = src.read(chunk)
        except VerificationError:
            raise
        except BROKEN_CONNECTION as exc:
            raise _SourceBroken(exc) from exc
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
    except (ResumeNotSupported, VerificationError):
        raise
    except BROKEN_CONNECTION as exc:
        raise _SourceBroken(exc) from exc


def _give_up(job: FileJob, attempts: int, exc: BaseException) -> TransientError:
    return TransientError(f"connection broke {attempts} times, giving up for now "
                          f"(the part file is kept): {exc}", datafile=job.name)


def _fetch(writer: _PartWriter, job: FileJob, chunk: int, max_resumes: int) -> int:
    """Copy the source into the part file, reopening it on broken connections.

    Returns the number of reopenings. A server that ignores Range costs a restart from byte 0;
    both count against `max_resumes`.
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
                # and the size check in _verify says so.
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
        if reopened > max_resumes:
            raise _give_up(job, reopened, last) from last


def write_file(fs: Any, root: str, job: FileJob, *, chunk: int = DEFAULT_CHUNK,
               max_resumes: int = 5, on_progress: Callable[[int], None] | None = None
               ) -> FileResult:
    """Deliver one datafile from `job.open` to `root/job.rel_path` on `fs`, verified.

    `on_progress(delta)` gets the bytes written (negative when a restart drops bytes).
    Raises SizeMismatch/ChecksumMismatch (part deleted), TargetError (target refuses),
    TransientError (connection kept breaking; part kept for the next attempt).
    """
    started = time.monotonic()
    final, part = _paths(fs, root, job)
    crc = _existing_match(fs, final, job, chunk)
    if crc is not None:
        return FileResult(job.datafile_id, job.rel_path, job.size,
                          time.monotonic() - started, crc, skipped=True)
    if job.open is None:
        raise ValueError(f"job for {job.name!r} has no source to open")
    with _target(final, job):
        make_dirs(fs, posixpath.dirname(final))
    writer = _PartWriter(fs, part, job, on_progress)
    try:
        resumed = int(writer.start(chunk))
        resumed += _fetch(writer, job, chunk, max_resumes)
        writer.finish()
    except VerificationError:  # the source sent too much: these bytes are no use
        writer.close()
        _remove_quietly(fs, part)
        raise
    finally:
        writer.close()
    return _verify_and_place(fs, part, final, job, writer, started, resumed)


def _verify_and_place(fs: Any, part: str, final: str, job: FileJob, writer: _PartWriter,
                      started: float, resumed: int) -> FileResult:
    try:
        _verify(job, writer.offset, writer.crc)
    except VerificationError:
        _remove_quietly(fs, part)
        raise
    _place(fs, part, final, job)
    return FileResult(job.datafile_id, job.rel_path, writer.offset,
                      time.monotonic() - started, writer.crc, resumed=resumed,
                      fetched=writer.fetched)


def write_stream_entry(fs: Any, root: str, job: FileJob, chunks: Iterable[bytes]) -> FileResult:
    """Deliver bytes that arrive as an iterable (a zip entry): same part/verify/rename rules.

    There is no resume: a zip cannot be reopened mid-entry. If the final file already matches,
    `chunks` is not consumed (the zip reader drains an entry when it moves on). Any failure
    deletes the part file.
    """
    started = time.monotonic()
    final, part = _paths(fs, root, job)
    crc = _existing_match(fs, final, job, DEFAULT_CHUNK)
    if crc is not None:
        return FileResult(job.datafile_id, job.rel_path, job.size,
                          time.monotonic() - started, crc, skipped=True)
    with _target(final, job):
        make_dirs(fs, posixpath.dirname(final))
    writer = _PartWriter(fs, part, job, None)
    try:
        writer.truncate()
        writer.copy(chunks)
        writer.finish()
    except BaseException:
        writer.close()
        _remove_quietly(fs, part)
        raise
    return _verify_and_place(fs, part, final, job, writer, started, 0)


# --- main storage mounted as a filesystem ---------------------------------------------------


def _file_opener(src_fs: Any, src_path: str) -> Callable[[int], Readable]:
    def open_at(offset: int) -> Readable:
        f = src_fs.open(src_path, "rb")
        if offset:
            f.seek(offset)
        return f

    return open_at


def _try_link(src_fs: Any, src_path: str, fs: Any, root: str, job: FileJob,
              chunk: int) -> FileResult | None:
    """Hard-link a verified source into place; None when linking is not possible here."""
    started = time.monotonic()
    final, part = _paths(fs, root, job)
    parent = posixpath.dirname(final)
    with _target(final, job):
        fs.makedirs(parent, exist_ok=True)
    try:
        same_device = os.stat(src_path).st_dev == os.stat(parent).st_dev
    except OSError:
        return None
    if not same_device:
        return None
    size, crc = _crc_of(src_fs, src_path, chunk)
    _verify(job, size, crc)  # the mounted main storage itself is wrong: copying won't help
    if os.path.exists(final) and os.path.samefile(src_path, final):
        return FileResult(job.datafile_id, job.rel_path, size, time.monotonic() - started,
                          crc, skipped=True)
    _remove_quietly(fs, part)
    try:
        os.link(src_path, part)
    except OSError as exc:  # EXDEV, EPERM (protected_hardlinks), EMLINK, no link support
        log.info("cannot hard-link %s (%s): copying", src_path, exc)
        return None
    _place(fs, part, final, job)
    return FileResult(job.datafile_id, job.rel_path, size, time.monotonic() - started, crc)


def link_or_copy(src_fs: Any, src_path: str, fs: Any, root: str, job: FileJob, *,
                 hardlink: bool = True, chunk: int = DEFAULT_CHUNK, max_resumes: int = 5,
                 on_progress: Callable[[int], None] | None = None) -> FileResult:
    """Deliver a file from IDS main storage mounted as a filesystem.

    When both sides are local and on one device, the source is verified and hard-linked (no
    bytes copied). Beware: a hard link shares the inode, so its owner and mode are main
    storage's, and anything that later chowns/chmods or edits the delivered file changes the
    archive copy too; pass `hardlink=False` where users get write access. Otherwise the file is
    stream-copied with `write_file` semantics.
    """
    if hardlink and is_local(src_fs) and is_local(fs):
        linked = _try_link(src_fs, src_path, fs, root, job, chunk)
        if linked is not None:
            return linked
    job = replace(job, open=_file_opener(src_fs, src_path))
    return write_file(fs, root, job, chunk=chunk, max_resumes=max_resumes,
                      on_progress=on_progress)


# --- many files -----------------------------------------------------------------------------

J = TypeVar("J")
R = TypeVar("R")


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
