"""The target below its root: every open, create, rename and delete pollcat makes there.

Users may write into their own delivery directories and plant anything in them (a symlink to
`/etc`, a FIFO, a directory where a file will go), and pollcat often runs with more rights than
they have. So no operation below the root follows a symbolic link, and this is structural, not a
check before each call (a check-then-open is a race):

* **local targets** (`LocalTarget`): every directory below the root is opened component by
  component with `O_DIRECTORY | O_NOFOLLOW` relative to its parent's descriptor (`dir_fd=`,
  openat-style), created with `mkdir(dir_fd=)` where missing; files are opened relative to that
  descriptor with `O_NOFOLLOW` (plus `O_EXCL` when created, `O_NONBLOCK` so a FIFO cannot block
  a read), and their type is checked on the open descriptor (`fstat`). Placement is one
  `os.replace(src_dir_fd=, dst_dir_fd=)`: rename never follows a link at either name. The root
  itself comes from configuration and is trusted.
* **other targets** (`FsspecTarget`: SFTP through sshfs, memory): there are no descriptors, so
  each step is preceded by a server-side `lstat` of every component (SFTP `LSTAT`, which does not
  follow links), new files are created with `x` (SFTP `FXF_EXCL`: fails on an existing name,
  a symlink included) and renames are OpenSSH's atomic `posix-rename`. **Residual risk:** a user
  who can write the directory can swap a component for a symlink between the `lstat` and the
  next call. Exclusive creation and rename do not follow links whatever happens, but an append to
  a resumed part file and `mkdir` of a missing directory could. Part files live in the
  pollcat-owned staging directory (`STAGING_NAME`, mode 0700), which other accounts cannot
  write, so the window is limited to directories that users own; run the SFTP account with the
  user's own rights where that matters.

Anything found where pollcat wants to write that it did not make is `UnsafeTargetPath` (a
permanent error naming the path); nothing is followed and nothing outside the root is touched.
OSErrors become pollcat's families through `target_errors`: full, over quota and read-only are
`TargetUnavailable` (a condition of the target), other refusals `TargetError`.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import IO, Any

from pollcat.errors import (
    PollcatError,
    TargetError,
    TargetUnavailable,
    TransientError,
    UnsafeTargetPath,
)
from pollcat.layout import check_relpath

log = logging.getLogger(__name__)

#: The pollcat-owned directory inside each download directory: part files, the manifest's
#: temporary file and the claim. Users cannot name a datafile into it (see `layout.RESERVED`).
STAGING_NAME = ".pollcat"

#: errno values of a full, over-quota or read-only target: retry later, the download is fine.
UNAVAILABLE = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}
#: errno values that mean the target refuses (retrying the same thing will not help).
_REFUSALS = {errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
             errno.ENAMETOOLONG, errno.EFBIG, errno.ELOOP}

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Kind(StrEnum):
    FILE = "file"
    DIR = "directory"
    SYMLINK = "symbolic link"
    OTHER = "special file"  # FIFO, socket, device


@dataclass(frozen=True)
class Entry:
    """What `lstat` found at a name (never what a link points to)."""

    kind: Kind
    size: int
    mtime: float
    uid: int | None = None
    mode: int = 0


def _kind(mode: int) -> Kind:
    if stat.S_ISREG(mode):
        return Kind.FILE
    if stat.S_ISDIR(mode):
        return Kind.DIR
    if stat.S_ISLNK(mode):
        return Kind.SYMLINK
    return Kind.OTHER


# --- errors ---------------------------------------------------------------------------------

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


def target_error(exc: OSError, path: str, datafile: str | None = None) -> PollcatError:
    """Full/quota/read-only: TargetUnavailable; other refusals: TargetError; else transient."""
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


class NameTaken(PollcatError):
    """`create` found the name taken (by anything, a link included): a control signal for
    callers that create exclusively on purpose (the claim), never a verdict."""


def _unsafe(path: str, found: Kind | str, wanted: str) -> UnsafeTargetPath:
    return UnsafeTargetPath(f"refusing {path!r}: a {found} is there where pollcat writes "
                            f"{wanted}; it was not made by pollcat and is left alone")


def fsync(out: Any) -> None:
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


def is_local(fs: Any) -> bool:
    """Whether an fsspec filesystem is the local one (symlinks and hard links apply)."""
    protocol = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def _split(rel: str) -> list[str]:
    return [] if rel in ("", ".") else check_relpath(rel).split("/")


# --- the interface --------------------------------------------------------------------------


class TargetFS:
    """A target root and the operations pollcat makes below it; paths are root-relative."""

    root: str
    #: Whether the part file is read back before placing (cheap on a local disk).
    reread_before_place: bool = False

    def path(self, rel: str) -> str:
        """The full path of `rel`, for messages."""
        return f"{self.root.rstrip('/')}/{rel}" if rel else self.root

    def lstat(self, rel: str) -> Entry | None:
        """What is at `rel` (None if nothing); its parents must be real directories."""
        raise NotImplementedError

    def make_dirs(self, rel: str) -> None:
        """Every directory of `rel` exists and is a real directory."""
        raise NotImplementedError

    def make_private_dir(self, rel: str) -> None:
        """`rel` (mode 0700) exists, made by pollcat; refused if it is anything else."""
        raise NotImplementedError

    def open_read(self, rel: str) -> IO[bytes] | None:
        """A regular file for reading; None if absent, UnsafeTargetPath if not a file."""
        raise NotImplementedError

    def create(self, rel: str) -> IO[bytes]:
        """A new, empty file; NameTaken if anything (a link too) has the name."""
        raise NotImplementedError

    def open_append(self, rel: str) -> IO[bytes] | None:
        """An existing regular file for appending; None if absent."""
        raise NotImplementedError

    def replace(self, src: str, dst: str) -> None:
        """Rename `src` over `dst` in one step; refused if `dst` is not a regular file."""
        raise NotImplementedError

    def remove(self, rel: str) -> None:
        """Unlink a file (a link itself, never its target); nothing if absent."""
        raise NotImplementedError

    def list_names(self, rel: str) -> list[str]:
        """The names in directory `rel` ([] if it does not exist)."""
        raise NotImplementedError

    def remove_quietly(self, rel: str) -> None:
        """`remove`, logging instead of raising (clean-up after a failure)."""
        try:
            self.remove(rel)
        except Exception as exc:  # noqa: BLE001 - the original failure matters more
            log.warning("could not remove %s: %s", self.path(rel), exc)

    def create_replacing(self, rel: str) -> IO[bytes]:
        """`create`, after removing a file of ours left at `rel` by an earlier attempt."""
        entry = self.lstat(rel)
        if entry is not None:
            if entry.kind is not Kind.FILE:
                raise _unsafe(self.path(rel), entry.kind, "a file")
            self.remove(rel)
        return self.create(rel)


def open_target(fs: Any, root: str) -> TargetFS:
    """The target layer for an fsspec filesystem and root (fd-based when it is local)."""
    root = root.rstrip("/") or "/"
    return LocalTarget(root) if is_local(fs) else FsspecTarget(fs, root)


# --- local: directory descriptors -----------------------------------------------------------


class LocalTarget(TargetFS):
    """A local root; every operation below it goes through `O_NOFOLLOW` directory fds."""

    reread_before_place = True

    def __init__(self, root: str):
        self.root = root

    def _open_root(self, create: bool) -> int:
        if create:
            with target_errors(self.root):
                os.makedirs(self.root, exist_ok=True)
        return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    @contextmanager
    def _dir(self, rel_dir: str, create: bool = False) -> Iterator[int]:
        """A descriptor of directory `rel_dir`, walked without following any link.

        A missing directory raises FileNotFoundError as it is (readers treat it as absence);
        every other failure is already one of pollcat's errors.
        """
        names = _split(rel_dir)
        try:
            fd = self._open_root(create)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise target_error(exc, self.root) from exc
        try:
            for i, name in enumerate(names):
                here = self.path("/".join(names[:i + 1]))
                try:
                    child = self._step(fd, name, here, create)
                except FileNotFoundError:  # callers that read decide what absence means
                    raise
                except OSError as exc:
                    raise target_error(exc, here) from exc
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def _step(self, parent: int, name: str, here: str, create: bool) -> int:
        """Open `name` under `parent` as a directory (made if missing and `create`)."""
        try:
            try:
                return os.open(name, _DIR_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(name, dir_fd=parent)
                except FileExistsError:  # made meanwhile by someone else: open what is there
                    pass
                return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise _unsafe(here, self._kind_at(parent, name), "a directory") from None
            raise

    @staticmethod
    def _kind_at(dir_fd: int, name: str) -> Kind:
        try:
            return _kind(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except OSError:
            return Kind.OTHER

    def lstat(self, rel: str) -> Entry | None:
        parent, name = posixpath.split(rel)
        try:
            with self._dir(parent) as fd, target_errors(self.path(rel)):
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    return None
        except FileNotFoundError:
            return None
        return Entry(_kind(st.st_mode), st.st_size, st.st_mtime, st.st_uid, st.st_mode)

    def make_dirs(self, rel: str) -> None:
        with self._dir(rel, create=True):
            pass

    def make_private_dir(self, rel: str) -> None:
        parent, name = posixpath.split(rel)
        with self._dir(parent, create=True) as fd, target_errors(self.path(rel)):
            try:
                os.mkdir(name, 0o700, dir_fd=fd)
                return
            except FileExistsError:
                pass
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                raise _unsafe(self.path(rel), _kind(st.st_mode), "its staging directory")
            if st.st_uid != os.geteuid() or st.st_mode & 0o022:
                raise UnsafeTargetPath(
                    f"refusing {self.path(rel)!r}: pollcat's staging directory is owned by "
                    f"uid {st.st_uid} with mode {stat.filemode(st.st_mode)}, so pollcat did "
                    "not make it; it is left alone")

    def _open_file(self, rel: str, flags: int, mode: int, wanted: str) -> int | None:
        """An fd for `rel` opened with `flags` (never following a link); None if absent."""
        parent, name = posixpath.split(rel)
        try:
            with self._dir(parent) as dir_fd, target_errors(self.path(rel)):
                try:
                    fd = os.open(name, flags, mode, dir_fd=dir_fd)
                except FileNotFoundError:
                    return None
                except OSError as exc:
                    if exc.errno == errno.ELOOP:
                        raise _unsafe(self.path(rel), Kind.SYMLINK, wanted) from None
                    if exc.errno in (errno.EISDIR, errno.ENXIO):  # a dir; a FIFO, no reader
                        found = self._kind_at(dir_fd, name)
                        raise _unsafe(self.path(rel), found, wanted) from None
                    raise
        except FileNotFoundError:
            return None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise _unsafe(self.path(rel), _kind(st.st_mode), wanted)
        return fd

    def open_read(self, rel: str) -> IO[bytes] | None:
        fd = self._open_file(rel, _READ_FLAGS, 0, "a file")
        return None if fd is None else os.fdopen(fd, "rb")

    def create(self, rel: str) -> IO[bytes]:
        parent, name = posixpath.split(rel)
        with target_errors(self.path(rel)), self._dir(parent) as dir_fd:
            try:
                fd = os.open(name, _CREATE_FLAGS, 0o644, dir_fd=dir_fd)
            except FileExistsError:
                raise NameTaken(self.path(rel)) from None
        return os.fdopen(fd, "wb")

    def open_append(self, rel: str) -> IO[bytes] | None:
        fd = self._open_file(rel, _APPEND_FLAGS, 0, "a part file")
        return None if fd is None else os.fdopen(fd, "ab")

    def replace(self, src: str, dst: str) -> None:
        src_dir, src_name = posixpath.split(src)
        dst_dir, dst_name = posixpath.split(dst)
        with self._dir(src_dir) as s_fd, self._dir(dst_dir) as d_fd, \
                target_errors(self.path(dst)):
            try:
                found = os.stat(dst_name, dir_fd=d_fd, follow_symlinks=False)
            except FileNotFoundError:
                found = None
            # The check only chooses the error: rename itself never follows a link, so a swap
            # after it cannot send bytes outside the root.
            if found is not None and not stat.S_ISREG(found.st_mode):
                raise _unsafe(self.path(dst), _kind(found.st_mode), "a file")
            os.replace(src_name, dst_name, src_dir_fd=s_fd, dst_dir_fd=d_fd)

    def remove(self, rel: str) -> None:
        parent, name = posixpath.split(rel)
        try:
            with self._dir(parent) as fd, target_errors(self.path(rel)):
                try:
                    os.unlink(name, dir_fd=fd)
                except FileNotFoundError:
                    pass
        except FileNotFoundError:
            pass

    def list_names(self, rel: str) -> list[str]:
        try:
            with self._dir(rel) as fd, target_errors(self.path(rel)):
                return os.listdir(fd)
        except FileNotFoundError:
            return []

    def link_from(self, src_path: str, rel: str) -> None:
        """Hard-link `src_path` (outside the target, trusted) as the new name `rel`."""
        parent, name = posixpath.split(rel)
        with self._dir(parent) as fd, target_errors(self.path(rel)):
            os.link(src_path, name, dst_dir_fd=fd, follow_symlinks=False)

    def device(self, rel_dir: str) -> int:
        """`st_dev` of a directory (to decide whether a hard link can work)."""
        with self._dir(rel_dir) as fd:
            return os.fstat(fd).st_dev


# --- remote: lstat before each step ---------------------------------------------------------


class FsspecTarget(TargetFS):
    """Any other fsspec filesystem: server-side lstat before each step (see the module doc)."""

    def __init__(self, fs: Any, root: str):
        self.fs, self.root = fs, root

    def _full(self, rel: str) -> str:
        return self.path(check_relpath(rel)) if rel else self.root

    def _lstat_full(self, full: str) -> Entry | None:
        pool = getattr(self.fs, "_pool", None)
        try:
            if pool is not None and hasattr(self.fs, "loop"):  # sshfs: SFTP LSTAT
                from fsspec.asyn import sync

                async def _lstat() -> Any:
                    async with pool.get() as channel:
                        return await channel.lstat(full)

                attrs = sync(self.fs.loop, _lstat)
                return Entry(_kind(attrs.permissions or 0), attrs.size or 0,
                             float(attrs.mtime or 0), attrs.uid, attrs.permissions or 0)
            info = self.fs.info(full)  # no symlinks on memory-like filesystems
        except FileNotFoundError:
            return None
        except Exception as exc:
            os_error = as_os_error(exc)
            if os_error is not None and os_error.errno == errno.ENOENT:
                return None
            raise
        kind = {"file": Kind.FILE, "directory": Kind.DIR, "link": Kind.SYMLINK}.get(
            info.get("type"), Kind.OTHER)
        mtime = info.get("mtime") or info.get("created") or 0
        return Entry(kind, int(info.get("size") or 0),
                     mtime.timestamp() if hasattr(mtime, "timestamp") else float(mtime),
                     info.get("uid"), int(info.get("mode") or 0))

    def _check_dirs(self, rel_dir: str, create: bool = False) -> bool:
        """Every component of `rel_dir` is a real directory (made when `create`); False if
        one is missing (only without `create`)."""
        names = _split(rel_dir)
        if create:
            with target_errors(self.root):
                self.fs.makedirs(self.root, exist_ok=True)
        for i in range(len(names)):
            full = self._full("/".join(names[:i + 1]))
            with target_errors(full):
                entry = self._lstat_full(full)
                if entry is None and create:
                    entry = self._mkdir(full, None)
                if entry is None:
                    return False
                if entry.kind is not Kind.DIR:
                    raise _unsafe(full, entry.kind, "a directory")
        return True

    def _mkdir(self, full: str, mode: int | None) -> Entry | None:
        """mkdir, then lstat what is there. A failure is only raised when there is still no
        entry: over SFTP v3 a directory made meanwhile by a parallel thread is "Failure"."""
        try:
            if mode is None:
                self.fs.mkdir(full, create_parents=False)
            else:
                try:
                    self.fs.mkdir(full, create_parents=False, mode=mode)
                except TypeError:  # filesystems without a mode argument
                    self.fs.mkdir(full, create_parents=False)
        except Exception as exc:
            entry = self._lstat_full(full)
            if entry is None or (as_os_error(exc) is None and not isinstance(exc, OSError)):
                raise
            return entry
        return self._lstat_full(full)

    def _require_dirs(self, rel_dir: str) -> None:
        if not self._check_dirs(rel_dir):
            raise TransientError(f"directory {self.path(rel_dir)!r} vanished")

    def lstat(self, rel: str) -> Entry | None:
        if not self._check_dirs(posixpath.dirname(rel)):
            return None
        with target_errors(self._full(rel)):
            return self._lstat_full(self._full(rel))

    def make_dirs(self, rel: str) -> None:
        self._check_dirs(rel, create=True)

    def make_private_dir(self, rel: str) -> None:
        self._check_dirs(posixpath.dirname(rel), create=True)
        full = self._full(rel)
        with target_errors(full):
            entry = self._lstat_full(full)
            if entry is None:
                entry = self._mkdir(full, 0o700)
            if entry is None or entry.kind is not Kind.DIR:
                raise _unsafe(full, entry.kind if entry else "nothing", "its staging directory")
            if entry.mode & 0o022:
                raise UnsafeTargetPath(f"refusing {full!r}: pollcat's staging directory is "
                                       "writable by others, so pollcat did not make it")

    def _regular_or_none(self, rel: str, wanted: str) -> str | None:
        if not self._check_dirs(posixpath.dirname(rel)):
            return None
        full = self._full(rel)
        with target_errors(full):
            entry = self._lstat_full(full)
        if entry is None:
            return None
        if entry.kind is not Kind.FILE:
            raise _unsafe(full, entry.kind, wanted)
        return full

    def open_read(self, rel: str) -> IO[bytes] | None:
        full = self._regular_or_none(rel, "a file")
        if full is None:
            return None
        with target_errors(full):
            return self.fs.open(full, "rb")

    def create(self, rel: str) -> IO[bytes]:
        self._require_dirs(posixpath.dirname(rel))
        full = self._full(rel)
        with target_errors(full):
            if self._lstat_full(full) is not None:
                raise NameTaken(full)
            try:
                return self.fs.open(full, "xb")  # SFTP FXF_EXCL: a link is not followed
            except (ValueError, NotImplementedError):  # no exclusive mode (memory)
                return self.fs.open(full, "wb")
            except Exception as exc:
                os_error = as_os_error(exc)
                if os_error is not None and os_error.errno == errno.EEXIST:
                    raise NameTaken(full) from None
                raise

    def open_append(self, rel: str) -> IO[bytes] | None:
        full = self._regular_or_none(rel, "a part file")
        if full is None:
            return None
        with target_errors(full):
            return self.fs.open(full, "ab")

    def replace(self, src: str, dst: str) -> None:
        if self._regular_or_none(src, "a part file") is None:
            raise TransientError(f"part file {self.path(src)!r} vanished")
        self._require_dirs(posixpath.dirname(dst))
        self._regular_or_none(dst, "a file")
        with target_errors(self._full(dst)):
            self.fs.mv(self._full(src), self._full(dst))

    def remove(self, rel: str) -> None:
        if not self._check_dirs(posixpath.dirname(rel)):
            return
        full = self._full(rel)
        with target_errors(full):
            entry = self._lstat_full(full)
            if entry is None:
                return
            if entry.kind is Kind.DIR:
                raise _unsafe(full, entry.kind, "a file")
            self.fs.rm_file(full)

    def list_names(self, rel: str) -> list[str]:
        full = self._full(rel)
        if rel and not self._check_dirs(posixpath.dirname(rel)):
            return []
        with target_errors(full):
            entry = self._lstat_full(full)
            if entry is None:
                return []
            if entry.kind is not Kind.DIR:
                raise _unsafe(full, entry.kind, "a directory")
            return [posixpath.basename(p.rstrip("/")) for p in self.fs.ls(full, detail=False)]
