"""Running the system tools access needs (setfacl, getfacl, useradd) without a shell.

Each tool is found on a fixed system PATH, not the service's, and run with an argument list,
a timeout, a minimal environment (C locale, so output can be parsed) and captured output. A
failure becomes the caller's error class carrying the download id, the path and the tool's own
message; a timeout is transient.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence

from pollcat.access.errors import AccessError, AccessToolTimeout

SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
TOOL_ENV = {"PATH": SYSTEM_PATH, "LC_ALL": "C"}


def find_tool(name: str, error: type[AccessError], *, download_id: int | None = None) -> str:
    """The absolute path of a system tool, or `error` saying which package provides it."""
    found = shutil.which(name, path=SYSTEM_PATH)
    if found is None:
        package = {"setfacl": "acl", "getfacl": "acl", "useradd": "passwd"}.get(name, name)
        raise error(f"{name} is not installed (Debian package {package!r})",
                    download_id=download_id)
    return found


def run_tool(argv: Sequence[str], *, error: type[AccessError], timeout: float,
             download_id: int | None = None, path: str | None = None,
             pass_fds: Sequence[int] = ()) -> str:
    """Run `argv` (argv[0] absolute) and return its stdout; raise `error` on failure."""
    try:
        proc = subprocess.run(list(argv), shell=False, check=False, capture_output=True,
                              text=True, timeout=timeout, env=TOOL_ENV, pass_fds=tuple(pass_fds),
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise AccessToolTimeout(f"{argv[0]} did not finish within {timeout:g}s",
                                download_id=download_id, datafile=path) from exc
    except OSError as exc:
        raise error(f"cannot run {argv[0]}: {exc}", download_id=download_id,
                    datafile=path) from exc
    if proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip().replace("\n", "; ")[:500]
        raise error(f"{argv[0].rsplit('/', 1)[-1]} failed (exit {proc.returncode}): {message}",
                    download_id=download_id, datafile=path)
    return proc.stdout
