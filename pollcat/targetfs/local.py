"""Local targets: every operation below the root through `O_NOFOLLOW` directory descriptors."""

from __future__ import annotations

import errno
import os
import posixpath
import stat
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import IO

from pollcat.errors import UnsafeTargetPath
from pollcat.layout import check_component
from pollcat.targetfs import beneath
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
from pollcat.targetfs.dircache import DirCache
from pollcat.targetfs.errmap import target_error, target_errors
from pollcat.targetfs.syncahead import SyncAhead

SYNC_THREADS = 8
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_APPEND_FLAGS = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_EUID = os.geteuid()
#: an explicit buffer size: with the default, `open` asks the descriptor whether it is a
#: terminal (an ioctl) on every file
_BUFFER = 64 * 1024
#: how long the root's descriptor is used before the root path is looked up again (an operator
#: may remount the target; users cannot write the root's parent, unlike what lies below it)
ROOT_RECHECK_S = 1.0


def _check_private(st: os.stat_result, path: str) -> None:
    """A staging directory pollcat made: owned by this process's user, writable by no one else."""
    if st.st_uid != _EUID or st.st_mode & 0o022:
        raise UnsafeTargetPath(
            f"refusing {path!r}: pollcat's staging directory is owned by uid {st.st_uid} with "
            f"mode {stat.filemode(st.st_mode)}, so pollcat did not make it; it is left alone")


def _set_mode(fd: int, mode: int) -> None:
    """`fchmod` a descriptor pollcat just created through to exactly `mode` (what `mkdir`'s and
    `open`'s mode argument leave is `mode & ~umask`: never more than `mode`, maybe less)."""
    if stat.S_IMODE(os.fstat(fd).st_mode) != mode:
        os.fchmod(fd, mode)


def _check_opened_staging(fd: int, path: str) -> None:
    """`_check_private` on a staging directory just opened; the descriptor is closed if not."""
    try:
        _check_private(os.fstat(fd), path)
    except UnsafeTargetPath:
        os.close(fd)
        raise


class LocalTarget(TargetFS):
    """A local root; every operation below it goes through `O_NOFOLLOW` directory fds."""

    reread_before_place = True

    def __init__(self, root: str):
        self.root = root
        self._dirs = DirCache()
        self._root_checked = float("-inf")  # when the root path last named the kept root fd
        self._placed: list[str] = []  # placed without fsync, for `sync`
        self._placed_dirs: set[str] = set()  # their directories, for `sync`
        self._placed_lock = threading.Lock()
        self._ahead = SyncAhead(SYNC_THREADS)
        weakref.finalize(self, self._dirs.close)

    def _open_root(self, create: bool) -> int:
        if create:
            with target_errors(self.root):
                parent = os.path.dirname(self.root.rstrip("/"))
                if parent:
                    os.makedirs(parent, exist_ok=True)  # outside the target: the umask's
                try:
                    os.mkdir(self.root, PRIVATE_DIR_MODE)
                except FileExistsError:
                    pass
                else:  # a root pollcat made: users may pass it, not list it (docs/access.md)
                    fd = os.open(self.root, _DIR_FLAGS)
                    try:
                        _set_mode(fd, TRAVERSE_DIR_MODE)
                    finally:
                        os.close(fd)
        return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def _root(self, create: bool, opened: list[int]) -> int:
        """The root's descriptor: the cached one while the root path still names it."""
        now = time.monotonic()
        if now - self._root_checked < ROOT_RECHECK_S and (fd := self._dirs.get(())) is not None:
            return fd
        try:
            st = os.stat(self.root)
            fd = self._dirs.valid((), st)
            if fd is not None:
                self._root_checked = now
                return fd
        except OSError:
            pass
        fd = self._open_root(create)
        if not self._dirs.keep((), fd):
            opened.append(fd)
        return fd

    @contextmanager
    def _dir(self, rel_dir: str, create: bool = False) -> Iterator[int]:
        """A descriptor of directory `rel_dir`, walked without following any link.

        Descriptors of the directories walked are kept (`DirCache`) for this target's lifetime
        (one download), and a kept one is used only after an `lstat` of every component from
        the root shows the same directories (device, inode) still there: the same check a
        fresh walk makes, without opening and closing each component on every file. A missing
        directory raises FileNotFoundError as it is (readers treat it as absence); every other
        failure is already one of pollcat's errors.
        """
        names = split_rel(rel_dir)
        opened: list[int] = []  # descriptors of this walk that the cache did not keep
        try:
            try:
                fd = self._root(create, opened)
            except FileNotFoundError:
                raise
            except OSError as exc:
                raise target_error(exc, self.root) from exc
            if names and beneath.available() and STAGING_NAME not in names[:-1]:
                below = self._beneath(fd, names, create)
                if below is not None:
                    opened.append(below)
                    yield below
                    return
            for i, name in enumerate(names):
                here = self.path("/".join(names[:i + 1]))
                key = tuple(names[:i + 1])
                try:
                    child = self._dirs.valid(key, os.stat(name, dir_fd=fd,
                                                          follow_symlinks=False))
                    if child is not None and name == STAGING_NAME:
                        _check_private(os.fstat(child), here)
                    if child is None:
                        child = self._step(fd, name, here, create, i + 1)
                        if not self._dirs.keep(key, child):
                            opened.append(child)
                except FileNotFoundError:  # callers that read decide what absence means
                    if not create:
                        raise
                    child = self._step(fd, name, here, create, i + 1)
                    if not self._dirs.keep(key, child):
                        opened.append(child)
                except UnsafeTargetPath:
                    raise
                except OSError as exc:
                    raise target_error(exc, here) from exc
                fd = child
            yield fd
        finally:
            for each in opened:
                os.close(each)

    def _beneath(self, root_fd: int, names: Sequence[str], create: bool) -> int | None:
        """The directory in one `openat2` that refuses links and escapes (see `beneath`); None
        when it is missing but may be made (`create`), or when something other than a plain
        directory chain is in the way: the walk then makes it or names exactly what is there."""
        rel = "/".join(names)
        try:
            fd = beneath.openat2(root_fd, rel, _DIR_FLAGS)
        except FileNotFoundError:
            if create:
                return None
            raise
        except OSError as exc:
            if exc.errno in beneath.WALK_INSTEAD:
                return None
            raise target_error(exc, self.path(rel)) from exc
        if names[-1] == STAGING_NAME:
            _check_opened_staging(fd, self.path(rel))
        return fd

    def _step(self, parent: int, name: str, here: str, create: bool, depth: int) -> int:
        """Open `name` under `parent` as a directory (made if missing and `create`).

        A directory made here is private to pollcat's account from the start (`mkdir` 0700),
        then set to exactly `dir_mode(depth)` through its descriptor: 0711 for the levels shared
        by downloads (`traverse_depth`), 0700 for the download's own.

        The staging directory is checked on every walk, not only when made: a user who owns the
        download directory could swap it for one of their own between two operations.
        """
        try:
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                if not create:
                    raise
                made = True
                try:
                    os.mkdir(name, PRIVATE_DIR_MODE, dir_fd=parent)
                except FileExistsError:  # made meanwhile by someone else: open what is there
                    made = False
                child = os.open(name, _DIR_FLAGS, dir_fd=parent)
                if made:
                    try:
                        if os.fstat(child).st_uid == _EUID:  # still the one made just now
                            _set_mode(child, self.dir_mode(depth))
                    except OSError:
                        os.close(child)
                        raise
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise unsafe(here, self._kind_at(parent, name), "a directory") from None
            raise
        if name == STAGING_NAME:
            _check_opened_staging(child, here)
        return child

    @staticmethod
    def _kind_at(dir_fd: int, name: str) -> Kind:
        try:
            return kind_of(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except OSError:
            return Kind.OTHER

    def lstat(self, rel: str) -> Entry | None:
        parent, name = posixpath.split(rel)
        return self._lstat_in(parent, [name])[0]

    def lstat_all(self, rel_dir: str, names: Sequence[str]) -> list[Entry | None]:
        return self._lstat_in(rel_dir, [check_component(name) for name in names])

    def _lstat_in(self, rel_dir: str, names: list[str]) -> list[Entry | None]:
        try:
            with self._dir(rel_dir) as fd:
                return [self._lstat_at(fd, rel_dir, name) for name in names]
        except FileNotFoundError:
            return [None] * len(names)

    def _lstat_at(self, dir_fd: int, rel_dir: str, name: str) -> Entry | None:
        with target_errors(self.path(posixpath.join(rel_dir, name))):
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                return None
        return Entry(kind_of(st.st_mode), st.st_size, st.st_mtime, st.st_uid, st.st_mode)

    def make_dirs(self, rel: str) -> None:
        with self._dir(rel, create=True):
            pass

    def make_private_dir(self, rel: str) -> None:
        parent, name = posixpath.split(rel)
        with self._dir(parent, create=True) as fd, target_errors(self.path(rel)):
            try:
                os.mkdir(name, PRIVATE_DIR_MODE, dir_fd=fd)
            except FileExistsError:
                pass
            else:  # exactly 0700 whatever the umask (it could leave pollcat unable to write)
                made = os.open(name, _DIR_FLAGS, dir_fd=fd)
                try:
                    if os.fstat(made).st_uid == _EUID:
                        _set_mode(made, PRIVATE_DIR_MODE)
                finally:
                    os.close(made)
                return
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                raise unsafe(self.path(rel), kind_of(st.st_mode), "its staging directory")
            _check_private(st, self.path(rel))

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
                        raise unsafe(self.path(rel), Kind.SYMLINK, wanted) from None
                    if exc.errno in (errno.EISDIR, errno.ENXIO):  # a dir; a FIFO, no reader
                        found = self._kind_at(dir_fd, name)
                        raise unsafe(self.path(rel), found, wanted) from None
                    raise
        except FileNotFoundError:
            return None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise unsafe(self.path(rel), kind_of(st.st_mode), wanted)
        return fd

    def open_read(self, rel: str) -> IO[bytes] | None:
        fd = self._open_file(rel, _READ_FLAGS, 0, "a file")
        return None if fd is None else os.fdopen(fd, "rb", buffering=_BUFFER)

    def create(self, rel: str) -> IO[bytes]:
        parent, name = posixpath.split(rel)
        with target_errors(self.path(rel)), self._dir(parent) as dir_fd:
            try:
                # owner-only from the first byte, and exactly so whatever the umask
                fd = os.open(name, _CREATE_FLAGS, PRIVATE_FILE_MODE, dir_fd=dir_fd)
            except FileExistsError:
                raise NameTaken(self.path(rel)) from None
            try:
                _set_mode(fd, PRIVATE_FILE_MODE)
            except OSError:
                os.close(fd)
                raise
        # O_RDWR underneath: the part writer reads slices back
        return os.fdopen(fd, "wb", buffering=_BUFFER)

    def open_append(self, rel: str) -> IO[bytes] | None:
        fd = self._open_file(rel, _APPEND_FLAGS, 0, "a part file")
        return None if fd is None else os.fdopen(fd, "ab", buffering=_BUFFER)

    def replace(self, src: str, dst: str, *, make_parent: bool = False) -> None:
        src_dir, src_name = posixpath.split(src)
        dst_dir, dst_name = posixpath.split(dst)
        with self._dir(src_dir) as s_fd, self._dir(dst_dir, create=make_parent) as d_fd, \
                target_errors(self.path(dst)):
            try:
                found = os.stat(dst_name, dir_fd=d_fd, follow_symlinks=False)
            except FileNotFoundError:
                found = None
            # The check only chooses the error: rename itself never follows a link, so a swap
            # after it cannot send bytes outside the root.
            if found is not None and not stat.S_ISREG(found.st_mode):
                raise unsafe(self.path(dst), kind_of(found.st_mode), "a file")
            os.replace(src_name, dst_name, src_dir_fd=s_fd, dst_dir_fd=d_fd)

    def place(self, src: str, dst: str) -> None:
        """One walk to the destination, making what is missing (not a walk to make it and
        another to rename into it: one file of thousands costs both)."""
        self.replace(src, dst, make_parent=True)

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
                # a descriptor of its own: listdir moves the offset of the (shared) kept one
                own = os.open(".", _DIR_FLAGS, dir_fd=fd)
                try:
                    return os.listdir(own)
                finally:
                    os.close(own)
        except FileNotFoundError:
            return []

    def remove_empty_dir(self, rel: str) -> bool:
        """rmdir of an empty real directory (retention, and the staging dir after delivery)."""
        parent, name = posixpath.split(rel)
        try:
            with self._dir(parent) as fd, target_errors(self.path(rel)):
                try:
                    found = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    return True
                if not stat.S_ISDIR(found.st_mode):
                    raise unsafe(self.path(rel), kind_of(found.st_mode), "a directory")
                try:
                    os.rmdir(name, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                        return False
                    if exc.errno != errno.ENOENT:
                        raise
                return True
        except FileNotFoundError:
            return True

    def sync_dir(self, rel: str) -> None:
        self._fsync_dir(rel)

    def link_from(self, src_path: str, rel: str) -> None:
        """Hard-link `src_path` (outside the target, trusted) as the new name `rel`."""
        parent, name = posixpath.split(rel)
        with self._dir(parent) as fd, target_errors(self.path(rel)):
            os.link(src_path, name, dst_dir_fd=fd, follow_symlinks=False)

    def note_placed(self, rel: str, handle: IO[bytes] | None = None) -> None:
        ahead = handle is not None and self._ahead.offer(rel, handle)
        if handle is not None and not ahead:
            handle.close()
        with self._placed_lock:
            self._placed_dirs.add(posixpath.dirname(rel))
            if not ahead:  # fsynced by name in `sync`
                self._placed.append(rel)

    def sync(self) -> None:
        """fsync every file placed since the last sync, and their directories, on a few
        threads at once (the filesystem groups concurrent fsyncs into few journal commits).
        Most files were fsynced meanwhile through the descriptors handed over (`SyncAhead`);
        the rest are opened again here. Not `syncfs`: that would also wait for every other
        writer's dirty data on a shared filesystem."""
        failed = self._ahead.drain()
        if failed:
            rel, exc = failed[0]
            raise target_error(exc, self.path(rel)) from exc
        with self._placed_lock:
            files, self._placed = self._placed, []
            dirs, self._placed_dirs = sorted(self._placed_dirs), set()
        with ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="pollcat-sync") as pool:
            for _ in pool.map(self._fsync_file, files):
                pass
            for _ in pool.map(self._fsync_dir, dirs):
                pass

    def _fsync_file(self, rel: str) -> None:
        f = self.open_read(rel)
        if f is not None:  # gone meanwhile (a user's delete): nothing of ours to make durable
            with f:
                os.fsync(f.fileno())

    def _fsync_dir(self, rel: str) -> None:
        with self._dir(rel) as fd:
            os.fsync(fd)

    def device(self, rel_dir: str) -> int:
        """`st_dev` of a directory (to decide whether a hard link can work)."""
        with self._dir(rel_dir) as fd:
            return os.fstat(fd).st_dev
