"""Targets without descriptors (SFTP through sshfs, memory): server-side lstat before each step.

See the package docstring for the residual race this leaves on directories users can write.
"""

from __future__ import annotations

import errno
import posixpath
from collections.abc import Awaitable, Callable, Sequence
from typing import IO, Any

from pollcat.errors import TargetError, TransientError, UnsafeTargetPath
from pollcat.layout import check_component, check_relpath
from pollcat.targetfs.base import (
    PRIVATE_DIR_MODE,
    PRIVATE_FILE_MODE,
    STAGING_NAME,
    TRAVERSE_DIR_MODE,
    Entry,
    Kind,
    NameTaken,
    TargetFS,
    kind_of,
    split_rel,
    unsafe,
)
from pollcat.targetfs.errmap import as_os_error, target_errors


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
                return Entry(kind_of(attrs.permissions or 0), attrs.size or 0,
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
        names = split_rel(rel_dir)
        if create:
            with target_errors(self.root):
                if self._lstat_full(self.root) is None:
                    parent = posixpath.dirname(self.root.rstrip("/"))
                    if parent and parent != self.root:
                        self.fs.makedirs(parent, exist_ok=True)
                    self._mkdir(self.root, TRAVERSE_DIR_MODE)
        for i in range(len(names)):
            full = self._full("/".join(names[:i + 1]))
            with target_errors(full):
                entry = self._lstat_full(full)
                if entry is None and create:
                    entry = self._mkdir(full, self.dir_mode(i + 1))
                if entry is None:
                    return False
                if entry.kind is not Kind.DIR:
                    raise unsafe(full, entry.kind, "a directory")
                if names[i] == STAGING_NAME and entry.mode & 0o022:
                    raise UnsafeTargetPath(f"refusing {full!r}: pollcat's staging directory is "
                                           "writable by others, so pollcat did not make it")
        return True

    def _sftp(self, call: Callable[[Any], Awaitable[Any]]) -> Any:
        """`call(channel)` on one of sshfs's SFTP channels (asyncssh's SFTPClient)."""
        from fsspec.asyn import sync

        async def _run() -> Any:
            async with self.fs._pool.get() as channel:
                return await call(channel)

        return sync(self.fs.loop, _run)

    @property
    def _is_sftp(self) -> bool:
        return getattr(self.fs, "_pool", None) is not None and hasattr(self.fs, "loop")

    def _mkdir(self, full: str, mode: int) -> Entry | None:
        """mkdir (owner-only from the start), then `mode` exactly; lstat what is there. A
        failure is only raised when there is still no entry: over SFTP v3 a directory made
        meanwhile by a parallel thread is "Failure", and is left as its maker sets it.

        Over SFTP the mkdir carries the permissions 0700 (OpenSSH's sftp-server passes them to
        mkdir(2), less its umask, so the directory is never wider than 0700), and an lsetstat
        (OpenSSH's `lsetstat@openssh.com`, which does not follow a link) then sets `mode`
        exactly; a server without it gets a SETSTAT of the path just made.
        """
        try:
            if self._is_sftp:
                self.fs.mkdir(full, create_parents=False, permissions=PRIVATE_DIR_MODE)
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
        if self._is_sftp:
            self._chmod_made(full, mode)
        return self._lstat_full(full)

    def _chmod_made(self, full: str, mode: int) -> None:
        """Set the exact mode of a directory pollcat just made over SFTP (see `_mkdir`)."""
        import asyncssh

        async def _chmod(channel: Any) -> None:
            try:
                await channel.chmod(full, mode, follow_symlinks=False)
            except asyncssh.SFTPOpUnsupported:
                await channel.chmod(full, mode)

        self._sftp(_chmod)

    def _private_file(self, f: IO[bytes]) -> None:
        """Make a file just created exactly owner-only (0600), before its first byte.

        sshfs opens without attributes, so OpenSSH's sftp-server creates the file 0666 less its
        umask; the FSETSTAT here (asyncssh's `SFTPClientFile.chmod`, fchmod(2) on the server)
        acts on the very handle the exclusive open returned, never on a name a link could
        redirect. Every file pollcat creates is in its staging directory (0700): until this
        call, the empty file cannot be reached by another account either.
        """
        if not self._is_sftp:
            return  # memory-like filesystems have no modes
        handle = getattr(f, "_file", None)  # sshfs.SSHFile wraps asyncssh's SFTPClientFile
        if handle is None or not hasattr(handle, "chmod"):
            raise TargetError(f"cannot make {getattr(f, 'path', f)!r} private: sshfs's file "
                              "has no SFTP handle (an sshfs this pollcat does not know)")
        from fsspec.asyn import sync

        sync(self.fs.loop, handle.chmod, PRIVATE_FILE_MODE)

    def _require_dirs(self, rel_dir: str) -> None:
        if not self._check_dirs(rel_dir):
            raise TransientError(f"directory {self.path(rel_dir)!r} vanished")

    def lstat(self, rel: str) -> Entry | None:
        if not self._check_dirs(posixpath.dirname(rel)):
            return None
        with target_errors(self._full(rel)):
            return self._lstat_full(self._full(rel))

    def lstat_all(self, rel_dir: str, names: Sequence[str]) -> list[Entry | None]:
        if not self._check_dirs(rel_dir):
            return [None] * len(names)
        found = []
        for name in names:
            full = self._full(posixpath.join(rel_dir, check_component(name)))
            with target_errors(full):
                found.append(self._lstat_full(full))
        return found

    def make_dirs(self, rel: str) -> None:
        self._check_dirs(rel, create=True)

    def make_private_dir(self, rel: str) -> None:
        self._check_dirs(posixpath.dirname(rel), create=True)
        full = self._full(rel)
        with target_errors(full):
            entry = self._lstat_full(full)
            if entry is None:
                entry = self._mkdir(full, PRIVATE_DIR_MODE)
            if entry is None or entry.kind is not Kind.DIR:
                raise unsafe(full, entry.kind if entry else "nothing", "its staging directory")
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
            raise unsafe(full, entry.kind, wanted)
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
                f = self.fs.open(full, "xb")  # SFTP FXF_EXCL: a link is not followed
            except (ValueError, NotImplementedError):  # no exclusive mode (memory)
                return self.fs.open(full, "wb")
            except Exception as exc:
                os_error = as_os_error(exc)
                if os_error is not None and os_error.errno == errno.EEXIST:
                    raise NameTaken(full) from None
                raise
            try:
                self._private_file(f)
            except BaseException:
                f.close()
                raise
            return f

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
                raise unsafe(full, entry.kind, "a file")
            self.fs.rm_file(full)

    def remove_empty_dir(self, rel: str) -> bool:
        """rmdir of an empty real directory (the staging dir after delivery)."""
        if not self._check_dirs(posixpath.dirname(rel)):
            return True
        full = self._full(rel)
        with target_errors(full):
            entry = self._lstat_full(full)
            if entry is None:
                return True
            if entry.kind is not Kind.DIR:
                raise unsafe(full, entry.kind, "a directory")
            if self.fs.ls(full, detail=False):
                return False
            if hasattr(self.fs, "_rmdir") and hasattr(self.fs, "loop"):
                # an async filesystem (sshfs): its sync `rmdir` is fsspec's no-op default
                from fsspec.asyn import sync

                sync(self.fs.loop, self.fs._rmdir, full)
            else:
                self.fs.rmdir(full)
            return True

    def list_names(self, rel: str) -> list[str]:
        full = self._full(rel)
        if rel and not self._check_dirs(posixpath.dirname(rel)):
            return []
        with target_errors(full):
            entry = self._lstat_full(full)
            if entry is None:
                return []
            if entry.kind is not Kind.DIR:
                raise unsafe(full, entry.kind, "a directory")
            return [posixpath.basename(p.rstrip("/")) for p in self.fs.ls(full, detail=False)]
