"""OSErrors (and SFTP status codes) from a target, mapped onto pollcat's error families.

sshfs maps only "no such file" and "permission denied" of asyncssh's SFTP errors
(`fsspec/sshfs: sshfs/utils.py`); the table here fills the gap so a full or read-only SFTP
target is named as such where the server says so.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from pollcat.errors import (
    PollcatError,
    TargetConnectionLost,
    TargetError,
    TargetUnavailable,
    TransientError,
)

#: errno values of a full, over-quota or read-only target: retry later, the download is fine.
UNAVAILABLE = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}
#: errno values of a remote target whose connection broke (asyncssh's ConnectionLost and
#: DisconnectError arrive as ECONNRESET): reconnect.
CONNECTION_LOST = {errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ENOTCONN}
#: errno values that mean the target refuses (retrying the same thing will not help).
_REFUSALS = {errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
             errno.ENAMETOOLONG, errno.EFBIG, errno.ELOOP}

#: SFTP status codes (draft-ietf-secsh-filexfer) → errno. OpenSSH speaks SFTP v3, where every
#: errno but ENOENT/EACCES/EPERM becomes the generic FX_FAILURE (4), see `_sftp_errno`.
_SFTP_ERRNO = {2: errno.ENOENT, 3: errno.EACCES, 10: errno.ENOENT, 11: errno.EEXIST,
               12: errno.EROFS, 14: errno.ENOSPC, 15: errno.EDQUOT, 18: errno.ENOTEMPTY,
               19: errno.ENOTDIR, 20: errno.EINVAL, 21: errno.ELOOP, 22: errno.EACCES,
               24: errno.EISDIR,
               # FX_NO_CONNECTION, FX_CONNECTION_LOST: asyncssh's "Connection not open/lost"
               6: errno.ENOTCONN, 7: errno.ECONNRESET}


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


def target_error(exc: OSError, path: str, datafile: str | None = None) -> PollcatError:
    """Full/quota/read-only: TargetUnavailable; other refusals: TargetError; else transient."""
    if exc.errno in CONNECTION_LOST:
        return TargetConnectionLost(f"the connection to the target broke at {path!r}: {exc}",
                                    datafile=datafile)
    if exc.errno in UNAVAILABLE:
        return TargetUnavailable(f"target cannot take {path!r} now: {exc}", datafile=datafile)
    if isinstance(exc, PermissionError) or exc.errno in _REFUSALS:
        return TargetError(f"target refused {path!r}: {exc}", datafile=datafile)
    return TransientError(f"target failed on {path!r}: {exc}", datafile=datafile)


@contextmanager
def target_errors(path: str, datafile: str | None = None) -> Iterator[None]:
    """Turn OSErrors (and SFTP errors, see `as_os_error`) from target operations into
    pollcat's families (`target_error`); pollcat's own errors pass through."""
    try:
        yield
    except PollcatError:
        raise
    except OSError as exc:
        raise target_error(exc, path, datafile) from exc
    except Exception as exc:
        os_error = as_os_error(exc)
        if os_error is None:
            raise
        raise target_error(os_error, path, datafile) from exc
