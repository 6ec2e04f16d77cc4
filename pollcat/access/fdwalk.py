"""Opening delivered objects under a target root without ever following a symbolic link.

Every component below the root is opened relative to its parent's file descriptor with
`O_NOFOLLOW`, so a symlink planted anywhere in a delivery (`alice/dl/INV -> /etc`) is refused
instead of granting on what it points to, and a path swapped after a check cannot redirect the
change: chown, chmod and ACLs are then applied to the descriptor itself. Regular files must
also have one link: a hard link to a file elsewhere (e.g. /etc/shadow, where the kernel allows
it) would otherwise be handed over too. The root itself is the operator's configuration and is
opened as given.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from enum import StrEnum

from pollcat.access.errors import UnsafeTargetObject
from pollcat.errors import UnsafePathError
from pollcat.layout import check_relpath

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class ObjectKind(StrEnum):
    FILE = "file"
    DIR = "dir"


def check_rel(rel: str, *, download_id: int | None = None) -> str:
    """A non-empty relative path with no `..`, empty or control-character component."""
    if rel == "":
        raise UnsafeTargetObject("refusing to act on the target root itself",
                                 download_id=download_id)
    try:
        return check_relpath(rel)
    except UnsafePathError as exc:
        raise UnsafeTargetObject(exc.message, download_id=download_id, datafile=rel) from exc


@contextlib.contextmanager
def open_root(root: str, *, download_id: int | None = None) -> Iterator[int]:
    """A directory descriptor for the target root (a local, absolute path)."""
    if not root.startswith("/"):
        raise UnsafeTargetObject(f"target root {root!r} is not an absolute local path",
                                 download_id=download_id)
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise UnsafeTargetObject(f"cannot open target root {root!r}: {exc.strerror}",
                                 download_id=download_id) from exc
    try:
        yield fd
    finally:
        os.close(fd)


def _unsafe(rel: str, why: str, download_id: int | None) -> UnsafeTargetObject:
    return UnsafeTargetObject(f"{why}; nothing is granted on it", download_id=download_id,
                              datafile=rel)


def _open_dir_component(parent: int, name: str, rel: str, download_id: int | None) -> int:
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _unsafe(rel, f"{name!r} is a symbolic link or not a directory",
                          download_id) from exc
        raise


def _open_file_component(parent: int, name: str, rel: str, download_id: int | None) -> int:
    st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        raise _unsafe(rel, "it is a symbolic link", download_id)
    if not stat.S_ISREG(st.st_mode):
        raise _unsafe(rel, "it is not a regular file", download_id)
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _unsafe(rel, "it is a symbolic link", download_id) from exc
        raise
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino) or \
            not stat.S_ISREG(opened.st_mode):
        os.close(fd)
        raise _unsafe(rel, "it was replaced while being opened", download_id)
    if opened.st_nlink != 1:
        os.close(fd)
        raise _unsafe(rel, f"it has {opened.st_nlink} hard links", download_id)
    return fd


@contextlib.contextmanager
def open_under(root_fd: int, rel: str, kind: ObjectKind, *,
               download_id: int | None = None) -> Iterator[int]:
    """A descriptor for `rel` (relative to the root) of the given kind, symlinks refused.

    FileNotFoundError passes through (callers decide whether a missing object matters);
    a symlink, hard link or wrong type raises UnsafeTargetObject.
    """
    check_rel(rel, download_id=download_id)
    parts = rel.split("/")
    opened: list[int] = []
    try:
        parent = root_fd
        for i, name in enumerate(parts):
            last = i == len(parts) - 1
            if last and kind is ObjectKind.FILE:
                fd = _open_file_component(parent, name, rel, download_id)
            else:
                fd = _open_dir_component(parent, name, rel, download_id)
            opened.append(fd)
            parent = fd
        yield parent
    finally:
        for fd in reversed(opened):
            os.close(fd)


def lexists_under(root_fd: int, rel: str) -> bool:
    """Whether `rel` exists (as anything, symlinks not followed) below real directories."""
    parent_rel, _, name = rel.rpartition("/")
    try:
        if parent_rel:
            with open_under(root_fd, parent_rel, ObjectKind.DIR) as parent:
                os.stat(name, dir_fd=parent, follow_symlinks=False)
        else:
            os.stat(name, dir_fd=root_fd, follow_symlinks=False)
    except (FileNotFoundError, UnsafeTargetObject, NotADirectoryError):
        return False
    return True


def proc_path(fd: int) -> str:
    """The /proc path through which a child process given `fd` reaches exactly that object."""
    return f"/proc/self/fd/{fd}"
