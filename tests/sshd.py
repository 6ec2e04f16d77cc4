"""A real OpenSSH `sshd` on 127.0.0.1 for SFTP target tests.

`start_sshd()` (or the `sshd` fixture) runs `/usr/sbin/sshd -D -e -f <config>` on a free port
with a throw-away ed25519 host key, a throw-away client key authorised for the test user (root
when the tests run as root, else the current user) and `Subsystem sftp internal-sftp`. Nothing
goes through a shell. It skips the test, with the reason, when sshd or ssh-keygen is missing
(`.ci/run` installs both), and stops the daemon afterwards.

The server's directory is world-readable (`0755`) and authorised keys are looked up in
`<dir>/authorized_keys/<user>`, so `authorize("nobody")` lets an unprivileged account log in too
(for tests of a target the SFTP user may not write to).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")  # Debian's privilege separation directory; sshd needs it


def find_sshd() -> str | None:
    for candidate in SSHD_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("sshd")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                    "-f", str(path)], check=True, capture_output=True, timeout=30)


@dataclass
class SshServer:
    """A running sshd: where it listens and how to log in."""

    dir: Path
    port: int
    user: str
    client_key: Path
    known_hosts: Path
    proc: subprocess.Popen | None = None
    log: Path = field(default=Path("/dev/null"))
    host: str = "127.0.0.1"

    def url(self, path: str | os.PathLike) -> str:
        """`sftp://127.0.0.1:<port>/<absolute path>`."""
        path = str(path)
        if not path.startswith("/"):
            raise ValueError(f"the SFTP target path must be absolute, got {path!r}")
        return f"sftp://{self.host}:{self.port}{path}"

    def storage_options(self, user: str | None = None, *, verify_host: bool = False) -> dict:
        """sshfs/asyncssh options: key login; `known_hosts=None` skips host-key checking, the
        pinned `known_hosts` file checks it."""
        return {"username": user or self.user, "client_keys": [str(self.client_key)],
                "known_hosts": str(self.known_hosts) if verify_host else None}

    def authorize(self, user: str) -> None:
        """Let `user` (an existing account) log in with the client key."""
        pwd.getpwnam(user)  # KeyError if there is no such account
        keys = self.dir / "authorized_keys"
        shutil.copyfile(self.client_key.with_suffix(".pub"), keys / user)
        (keys / user).chmod(0o644)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def restart(self, timeout: float = 15.0) -> None:
        """Kill every connection (the per-session sshd children) and the listener, then
        start sshd again on the same port: what a restarted or rebooted host does to
        clients."""
        assert self.proc is not None, "not running"
        for pid in _descendants(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.stop()
        sshd = find_sshd()
        assert sshd is not None
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(self.dir / "sshd_config")],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        _wait_for_banner(self, timeout)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc), children first found first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _config(server: SshServer, host_key: Path, sftp_flags: tuple[str, ...]) -> str:
    sftp = " ".join(("internal-sftp", *sftp_flags))
    return "\n".join([
        f"ListenAddress {server.host}",
        f"Port {server.port}",
        f"HostKey {host_key}",
        f"PidFile {server.dir / 'sshd.pid'}",
        f"AuthorizedKeysFile {server.dir / 'authorized_keys'}/%u",
        "AuthenticationMethods publickey",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "StrictModes no",
        "UsePAM no",
        "UseDNS no",
        "MaxSessions 32",
        "MaxStartups 64",
        "LogLevel VERBOSE",
        f"Subsystem sftp {sftp}",
        "",
    ])


def _wait_for_banner(server: SshServer, timeout: float) -> None:
    """Until the port answers with an SSH banner (not just any listener)."""
    deadline = time.monotonic() + timeout
    while True:
        if server.proc is not None and server.proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {server.proc.returncode}:\n"
                               f"{server.log_text()}")
        try:
            with socket.create_connection((server.host, server.port), timeout=1) as s:
                if s.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"sshd did not answer on port {server.port} within {timeout}s:"
                               f"\n{server.log_text()}")
        time.sleep(0.05)


def start_sshd(*, sftp_flags: tuple[str, ...] = (), timeout: float = 15.0) -> SshServer:
    """Start sshd; `pytest.skip` if OpenSSH is not installed or cannot run here."""
    sshd = find_sshd()
    if sshd is None or shutil.which("ssh-keygen") is None:
        pytest.skip("OpenSSH server not installed (sshd/ssh-keygen missing; on Debian: "
                    "apt-get install openssh-server openssh-client, as .ci/run does)")
    if not PRIVSEP_DIR.is_dir():
        try:
            PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as exc:
            pytest.skip(f"sshd needs its privilege separation directory {PRIVSEP_DIR}: {exc}")
    user = "root" if os.geteuid() == 0 else getpass.getuser()
    base = Path(tempfile.mkdtemp(prefix="pollcat-sshd-"))
    base.chmod(0o755)  # an unprivileged login must reach its authorized_keys file
    (base / "authorized_keys").mkdir(mode=0o755)
    host_key, client_key = base / "ssh_host_ed25519_key", base / "client_ed25519"
    _keygen(host_key, "pollcat-test-host")
    _keygen(client_key, "pollcat-test-client")
    public_host_key = (base / "ssh_host_ed25519_key.pub").read_text().split()
    last_error: Exception | None = None
    for _attempt in range(3):  # the free port may be taken between probing and binding
        server = SshServer(dir=base, port=_free_port(), user=user, client_key=client_key,
                           known_hosts=base / "known_hosts", log=base / "sshd.log")
        server.authorize(user)
        server.known_hosts.write_text(
            f"[{server.host}]:{server.port} {public_host_key[0]} {public_host_key[1]}\n")
        config = base / "sshd_config"
        config.write_text(_config(server, host_key, sftp_flags))
        with open(server.log, "wb") as log:
            server.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)],
                                           stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            _wait_for_banner(server, timeout)
            return server
        except (RuntimeError, TimeoutError) as exc:
            last_error = exc
            server.stop()
            if "Address already in use" not in server.log_text():
                break
    shutil.rmtree(base, ignore_errors=True)
    raise RuntimeError(f"could not start sshd: {last_error}")


@contextlib.contextmanager
def running_sshd(**kwargs) -> Iterator[SshServer]:
    server = start_sshd(**kwargs)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture
def sshd() -> Iterator[SshServer]:
    """A fresh sshd for one test (cheap: ~0.1 s to start)."""
    with running_sshd() as server:
        yield server
