"""The target layer's vocabulary: what `lstat` finds, the interface every target implements,
and the helpers they share."""

from __future__ import annotations

import functools
import logging
import os
import posixpath
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import IO, Any

from pollcat.errors import PollcatError, UnsafeTargetPath
from pollcat.layout import check_component, check_relpath

log = logging.getLogger("pollcat.targetfs")

#: The pollcat-owned directory inside each download directory: part files, the manifest's
#: temporary file and the claim. Users cannot name a datafile into it (see `layout.RESERVED_NAMES`).
STAGING_NAME = ".pollcat"

#: Modes of what pollcat creates on a target (see `TargetFS.traverse_depth`).
PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
TRAVERSE_DIR_MODE = 0o711


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


def kind_of(mode: int) -> Kind:
    """The kind of an `st_mode`."""
    if stat.S_ISREG(mode):
        return Kind.FILE
    if stat.S_ISDIR(mode):
        return Kind.DIR
    if stat.S_ISLNK(mode):
        return Kind.SYMLINK
    return Kind.OTHER


class NameTaken(PollcatError):
    """`create` found the name taken (by anything, a link included): a control signal for
    callers that create exclusively on purpose (the claim), never a verdict."""


def unsafe(path: str, found: Kind | str, wanted: str) -> UnsafeTargetPath:
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


@functools.lru_cache(maxsize=4096)
def split_rel(rel: str) -> tuple[str, ...]:
    """The components of a checked root-relative path. Cached: every target operation splits
    its path, and a download's few directories recur for each of its files."""
    return () if rel in ("", ".") else tuple(check_relpath(rel).split("/"))


# --- the interface --------------------------------------------------------------------------


class TargetFS:
    """A target root and the operations pollcat makes below it; paths are root-relative."""

    root: str
    #: Whether the part file is read back before placing (cheap on a local disk).
    reread_before_place: bool = False
    #: Set while a batch of files is written whose durability one `sync()` provides at the end
    #: (`transfer.synced_once`): the part writer then only starts the writeback.
    sync_deferred: bool = False
    #: How many directory levels below the root are shared by several downloads (`alice/` in
    #: the `{user}/{download}/...` layout: the levels above the download's own directory, see
    #: `layout.download_template`). Directories pollcat makes there are `TRAVERSE_DIR_MODE`
    #: (others may pass, not list); every other directory it makes is `PRIVATE_DIR_MODE`, and
    #: every file `PRIVATE_FILE_MODE`, exactly, whatever the umask: a delivery is private to
    #: pollcat's account from its first byte, and only the access policy widens it.
    traverse_depth: int = 0

    def dir_mode(self, depth: int) -> int:
        """The mode of a directory pollcat makes `depth` levels below the root (1: a child)."""
        return TRAVERSE_DIR_MODE if depth <= self.traverse_depth else PRIVATE_DIR_MODE

    def note_placed(self, rel: str, handle: IO[bytes] | None = None) -> None:
        """A file placed while `sync_deferred`: `sync` makes it durable. `handle`: the placed
        file, still open (the part writer's), which the target takes over and closes."""
        if handle is not None:
            handle.close()

    def sync(self) -> None:
        """Make every file noted by `note_placed` durable. Only targets that can batch it
        (local) defer per-file fsyncs; the others fsync each file as it is written."""

    def path(self, rel: str) -> str:
        """The full path of `rel`, for messages."""
        return f"{self.root.rstrip('/')}/{rel}" if rel else self.root

    def lstat(self, rel: str) -> Entry | None:
        """What is at `rel` (None if nothing); its parents must be real directories."""
        raise NotImplementedError

    def lstat_all(self, rel_dir: str, names: Sequence[str]) -> list[Entry | None]:
        """`lstat` of each of `names` in directory `rel_dir` (None for each if it is missing):
        one walk to the directory for all of them (the claim check before every placement)."""
        return [self.lstat(posixpath.join(rel_dir, check_component(name))) for name in names]

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

    def place(self, src: str, dst: str) -> None:
        """`replace`, after making `dst`'s directories (a user may have removed them since the
        download began: placement makes them again, so only this file's attempt is affected)."""
        self.make_dirs(posixpath.dirname(dst))
        self.replace(src, dst)

    def remove(self, rel: str) -> None:
        """Unlink a file (a link itself, never its target); nothing if absent."""
        raise NotImplementedError

    def list_names(self, rel: str) -> list[str]:
        """The names in directory `rel` ([] if it does not exist)."""
        raise NotImplementedError

    def remove_empty_dir(self, rel: str) -> bool:
        """rmdir `rel` (a real directory, never a link) if it is empty; True when it is gone
        (also when it was not there), False when something is still in it."""
        raise NotImplementedError

    def sync_dir(self, rel: str) -> None:
        """Make the entries of directory `rel` durable (a rename into it): fsync where the
        target can (local); elsewhere the server's own durability is what there is."""

    def remove_quietly(self, rel: str) -> None:
        """`remove`, logging instead of raising (clean-up after a failure)."""
        try:
            self.remove(rel)
        except Exception as exc:  # noqa: BLE001 - the original failure matters more
            log.warning("could not remove %s: %s", self.path(rel), exc)

    def create_replacing(self, rel: str) -> IO[bytes]:
        """`create`, after removing a file of ours left at `rel` by an earlier attempt.

        The exclusive create is tried first: the name is usually free, and one walk is cheaper
        than two when a download has thousands of files."""
        try:
            return self.create(rel)
        except NameTaken:
            pass
        entry = self.lstat(rel)
        if entry is not None:
            if entry.kind is not Kind.FILE:
                raise unsafe(self.path(rel), entry.kind, "a file")
            self.remove(rel)
        return self.create(rel)
