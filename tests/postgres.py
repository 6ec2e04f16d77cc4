"""A real PostgreSQL server on 127.0.0.1 for tests, in a temporary directory.

`running_postgres()` runs Debian's `initdb` into a fresh temp dir and starts `postgres` on a free
port, listening on 127.0.0.1 only (its unix socket in the same temp dir, so it touches nothing
system-wide), with `trust` authentication for one superuser, `pollcat`. PostgreSQL refuses to
run as root, so when the tests run as root the server runs as the `postgres` system account that
Debian's package creates. Durability is switched off (`fsync=off`): a test database need not
survive a power cut, and the tests run faster.

Each test takes a fresh database from `PostgresServer.create_database()` (a few tens of
milliseconds), so one server serves a whole module. When the binaries are missing the test is
skipped with the reason, except under CI (`CI` set), where `.ci/run` installs them and a skip
would hide a missing install step: there it fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SUPERUSER = "pollcat"
RUN_AS = "postgres"  # the account Debian's postgresql package creates


def find_bindir() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian keeps them out of PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(Path(p).parts[4]) if Path(p).parts[4].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    return Path(on_path).resolve().parent if on_path else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    """A running server: where it listens and how to reach a database on it."""

    dir: Path
    port: int
    proc: subprocess.Popen
    host: str = "127.0.0.1"

    def url(self, database: str = "postgres", driver: str = "psycopg") -> str:
        """An SQLAlchemy URL (`driver` "psycopg" for sync code, "asyncpg" for Prefect)."""
        return f"postgresql+{driver}://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its psycopg SQLAlchemy URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(host=self.host, port=self.port, user=SUPERUSER,
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "postgres.log").read_text(errors="replace")
        return ""

    def stop(self) -> None:
        """Fast shutdown (SIGINT: abort sessions, checkpoint), SIGKILL if that hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _as_user() -> dict:
    """Popen arguments that drop root to the postgres account (nothing when not root)."""
    if os.geteuid() != 0:
        return {}
    try:
        account = pwd.getpwnam(RUN_AS)
    except KeyError:
        _unavailable(f"running as root and there is no {RUN_AS!r} account to run PostgreSQL as")
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGQUIT (immediate shutdown) to postgres if the test process
    dies without its teardown (killed by a timeout), so no server outlives its test run."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGQUIT), 0, 0, 0)


def _unavailable(reason: str) -> None:
    message = f"{reason} (on Debian: apt-get install postgresql, as .ci/run does)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _wait_ready(server: PostgresServer, timeout: float) -> None:
    """Until the server accepts a login (a listening port alone is not enough)."""
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {server.proc.returncode}:\n"
                               f"{server.log_text()}")
        try:
            with psycopg.connect(host=server.host, port=server.port, user=SUPERUSER,
                                 dbname="postgres", connect_timeout=2):
                return
        except psycopg.OperationalError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"postgres did not accept logins within {timeout}s:\n"
                               f"{server.log_text()}")
        time.sleep(0.1)


def start_postgres(*, timeout: float = 60.0) -> PostgresServer:
    """initdb + start; skip (or fail under CI) when PostgreSQL is not installed."""
    bindir = find_bindir()
    if bindir is None or not (bindir / "initdb").exists():
        _unavailable("PostgreSQL server binaries (initdb, postgres) not found")
    user = _as_user()
    base = Path(tempfile.mkdtemp(prefix="pollcat-pg-"))
    if user:
        os.chown(base, user["user"], user["group"])
    base.chmod(0o700)
    data = base / "data"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
    subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, "-A", "trust",
                    "-E", "UTF8", "--locale=C", "--no-sync"], check=True, capture_output=True,
                   timeout=120, cwd=base, env=env, **user)
    last_error: Exception | None = None
    for _attempt in range(3):  # the free port may be taken between probing and binding
        port = _free_port()
        with open(base / "postgres.log", "wb") as log:
            proc = subprocess.Popen(
                [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1",
                 "-k", str(base), "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off", "-c", "max_connections=200"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=base, env=env,
                preexec_fn=_die_with_parent, **user)
        server = PostgresServer(dir=base, port=port, proc=proc)
        try:
            _wait_ready(server, timeout)
            return server
        except (RuntimeError, TimeoutError) as exc:
            last_error = exc
            server.stop()
            if "could not bind" not in server.log_text():
                break
    shutil.rmtree(base, ignore_errors=True)
    raise RuntimeError(f"could not start PostgreSQL: {last_error}")


@contextlib.contextmanager
def running_postgres(**kwargs) -> Iterator[PostgresServer]:
    """A server for the duration of the block, stopped and removed afterwards."""
    server = start_postgres(**kwargs)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)
