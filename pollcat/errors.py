"""What can go wrong, in two families that decide what happens to a download, and the errors
that are not about a download at all.

`TransientError`s are retried (network, 5xx, timeouts) until a deadline; `PermanentError`s are
not: the download is set EXPIRED with the reason. `ConfigurationError` is neither: it is pollcat's
own setup that is wrong (a password, a missing admin right), so it stops the sweep and touches no
download. `NotReady` is not an error of anything: the data is still being restored. Every error
carries the download id and the datafile it concerns, when known, and the service's own message,
so an operator can act on one log line. The full table of what is retried where is in
docs/architecture.md.
"""

from __future__ import annotations


class PollcatError(Exception):
    """Base class. `str(err)` names the download and datafile when they are known."""

    def __init__(self, message: str, *, download_id: int | None = None,
                 datafile: str | None = None, service: str | None = None,
                 status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.download_id = download_id
        self.datafile = datafile
        self.service = service
        self.status = status
        self.code = code

    def with_context(self, *, download_id: int | None = None,
                     datafile: str | None = None) -> PollcatError:
        """Fill in the download/datafile if the raiser did not know them; returns self."""
        if self.download_id is None:
            self.download_id = download_id
        if self.datafile is None:
            self.datafile = datafile
        return self

    def __str__(self) -> str:
        where = []
        if self.download_id is not None:
            where.append(f"download {self.download_id}")
        if self.datafile is not None:
            where.append(f"datafile {self.datafile!r}")
        svc = ""
        if self.service:
            svc = f" [{self.service}" + (f" {self.status}" if self.status else "") + (
                f" {self.code}" if self.code else "") + "]"
        prefix = (", ".join(where) + ": ") if where else ""
        return f"{prefix}{self.message}{svc}"


class TransientError(PollcatError):
    """Worth retrying: the network, a 5xx, 503 DataNotOnline, a timeout."""


class PermanentError(PollcatError):
    """Retrying will not help: no access, deleted data, a refused name, a refusing target."""


class ConfigurationError(PollcatError):
    """pollcat's own setup is wrong (a bad block, a wrong password, a missing admin right).

    Not a verdict on any download: the sweep stops with this error and a failed run."""


class AccountRefused(ConfigurationError):
    """A service refused the functional account itself (not one user's data)."""


class ServiceError(PollcatError):
    """A service answered with an error; the subclass says whether to retry."""


class TransientServiceError(ServiceError, TransientError):
    pass


class PermanentServiceError(ServiceError, PermanentError):
    pass


class SessionError(TransientServiceError):
    """The ICAT session is unknown or expired: log in again and retry."""


class NotReady(PollcatError):
    """The IDS has not got the data online (503 DataNotOnline): an outcome, not a failure.

    Deliberately outside `TransientError`, so nothing treats it as a broken connection to reopen
    at once: the download waits for a later check."""


class PreparedIdUnknown(PermanentServiceError):
    """The IDS no longer knows the preparedId (404): prepare again."""


class RestoreFailed(TransientServiceError):
    """The IDS says "Restore failed": reset, and try again later (bounded attempts)."""


class UnsafePathError(PermanentError):
    """A name or layout would escape the target root or contains forbidden characters."""


class InvalidUserName(PermanentError):
    """The ICAT user cannot be mapped to a valid destination account name."""


class VerificationError(TransientError):
    """Bytes arrived but size or CRC32 disagree with ICAT; the file is fetched again."""


class ChecksumMismatch(VerificationError):
    pass


class SizeMismatch(VerificationError):
    pass


class ResumeNotSupported(TransientError):
    """The server ignored `Range` (no 206): restart the file from byte 0."""


class TargetError(PermanentError):
    """The target refused a write (permissions, read-only, full)."""


class TargetUnavailable(TransientError):
    """The target cannot take data now (full, over quota, read-only): a condition of the
    target, not a verdict on the download. Downloads routed there are held, never expired."""


class TruncatedStream(TransientError):
    """A zip (or other) stream ended before it was complete: fetch it again."""


class CorruptStream(VerificationError):
    """Bytes arrived but are not a valid zip stream (bad signature, bad deflate data)."""


class UnsafeTargetPath(PermanentError):
    """Something pollcat did not make sits where it wants to write: a symbolic link, FIFO,
    device, or a directory where a file belongs (or a file where a directory belongs).

    Users may write into their delivery directories, so this is refused, never followed or
    removed; the message names the path so an operator can look at it.
    """


class TargetConnectionLost(TransientError):
    """The connection to a remote target (SFTP) broke: reconnect and continue the delivery,
    which resumes from its part files."""


class DeliveryLocked(PollcatError):
    """Another worker owns this download now (its claim on the target is live, or this worker
    lost its claim mid-transfer): an outcome ("locked"), never a failure of the download."""
