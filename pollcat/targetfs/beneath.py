"""openat2(2) with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`.

The kernel's own form of the component-by-component walk `LocalTarget` makes: a relative path
below a directory descriptor, resolved in one system call that fails on any symbolic link, any
`..` leaving the directory and any absolute path, with no window between checking a component
and using it. It replaces an `lstat` per component on every operation (about 65 system calls per
delivered file, each one a GIL hand-over between the transfer threads) by one `openat2`.

Linux 5.6 and later. Where it is missing (`ENOSYS`: another kernel; `EPERM`: a seccomp filter
of a container runtime that predates it), `available()` is False and callers walk the
components themselves. No Python release before 3.14 exposes the call, hence ctypes; the
system call number is the same on every architecture that has it (the unified table).
"""

from __future__ import annotations

import ctypes
import errno
import os

from pollcat.targetfs import libc

SYS_OPENAT2 = 437
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS

#: errnos after which the caller walks the components itself: something other than a plain
#: directory chain is in the way (a link, a file where a directory should be, an escape), which
#: the walk then names exactly; the kernel wants the lookup retried (a rename raced it); or the
#: path is longer than PATH_MAX, which a walk by descriptors does not mind
WALK_INSTEAD = frozenset({errno.ELOOP, errno.ENOTDIR, errno.EXDEV, errno.EAGAIN,
                          errno.ENAMETOOLONG})


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def _load():  # noqa: ANN202 - a ctypes function or None
    syscall = libc.function("syscall")
    if syscall is None:
        return None
    syscall.restype = ctypes.c_long
    syscall.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p,
                        ctypes.POINTER(_OpenHow), ctypes.c_size_t]
    return syscall


_syscall = _load()


def openat2(dir_fd: int, path: str, flags: int, mode: int = 0) -> int:
    """A descriptor of `path` below `dir_fd`, resolved without links; OSError as os.open's."""
    if _syscall is None:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS), path)
    how = _OpenHow(flags | os.O_CLOEXEC, mode, RESOLVE)
    encoded = os.fsencode(path)
    fd = _syscall(SYS_OPENAT2, dir_fd, encoded, ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)
    return int(fd)


def _probe() -> bool:
    """Whether openat2 works here (a kernel or a seccomp filter may refuse it)."""
    if _syscall is None:
        return False
    root = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.close(openat2(root, ".", os.O_RDONLY | os.O_DIRECTORY))
        return True
    except OSError:
        return False
    finally:
        os.close(root)


_AVAILABLE = _probe()


def available() -> bool:
    """Whether `openat2` can be used (tests switch it off to exercise the walk)."""
    return _AVAILABLE
