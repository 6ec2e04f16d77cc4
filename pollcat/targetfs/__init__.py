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

Everything pollcat creates is owner-only from its first byte, exactly, whatever the umask:
files 0600, the download's directories 0700, the levels shared by downloads above it 0711
(`TargetFS.traverse_depth`, `dir_mode`); only the access policy's grant widens it
(docs/access.md, "Private from the first byte").

Anything found where pollcat wants to write that it did not make is `UnsafeTargetPath` (a
permanent error naming the path); nothing is followed and nothing outside the root is touched.
OSErrors become pollcat's families through `target_errors`: full, over quota and read-only are
`TargetUnavailable` (a condition of the target), other refusals `TargetError`.
"""

from __future__ import annotations

from typing import Any

from pollcat.targetfs.base import (
    STAGING_NAME,
    Entry,
    Kind,
    NameTaken,
    TargetFS,
    fsync,
    is_local,
)
from pollcat.targetfs.errmap import UNAVAILABLE, as_os_error, target_error, target_errors
from pollcat.targetfs.local import LocalTarget
from pollcat.targetfs.remote import FsspecTarget

__all__ = ["STAGING_NAME", "UNAVAILABLE", "Entry", "FsspecTarget", "Kind", "LocalTarget",
           "NameTaken", "TargetFS", "as_os_error", "fsync", "is_local", "open_target",
           "target_error", "target_errors"]


def open_target(fs: Any, root: str) -> TargetFS:
    """The target layer for an fsspec filesystem and root (fd-based when it is local)."""
    root = root.rstrip("/") or "/"
    return LocalTarget(root) if is_local(fs) else FsspecTarget(fs, root)
