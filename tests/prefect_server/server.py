"""A real `prefect server start` (SQLite, temp PREFECT_HOME) and the processes around it.

Used by the server tests and by `make demo`: the same commands a facility types, run as
argument lists with an explicit environment, each process in its own process group so that
stopping it also stops what it started (a worker's flow-run subprocesses).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from simfacility.server import free_port

#: what Prefect's own client retries (`prefect.client.base`), and how often
RETRYABLE_STATUS = frozenset({429, 502, 503})
API_RETRIES = 5

REPO = Path(__file__).resolve().parents[2]
# what deploy/systemd/prefect-server.env.example sets besides paths and URLs
SERVER_ENV = {"PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "pollcat.deployments.event_ordering"}


def clean_env(home: Path, api_url: str, **extra: str) -> dict[str, str]:
    """This process's environment without any PREFECT_* setting, pointed at `api_url`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_API_URL=api_url,
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_CLI_PROMPT="false",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p))
    env.update(extra)
    return env


@dataclass
class Process:
    """A child process in its own session, with its output in a log file."""

    name: str
    popen: subprocess.Popen
    log_path: Path
    _log: IO[bytes] = field(repr=False)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20.0) -> float | None:
        """Signal the process group; SIGKILL it after `timeout`. Returns the seconds the
        process took to exit on `sig`, or None if it had to be killed."""
        if self.popen.poll() is not None:
            self._log.close()
            return 0.0
        t0 = time.monotonic()
        try:
            os.killpg(self.popen.pid, sig)
            self.popen.wait(timeout)
            took: float | None = time.monotonic() - t0
        except subprocess.TimeoutExpired:
            took = None
        except ProcessLookupError:
            took = 0.0
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)  # whatever the group left behind
        except ProcessLookupError:
            pass
        self.popen.wait(10)
        self._log.close()
        return took


class PrefectServer:
    """`prefect server start` on a free 127.0.0.1 port; `start()` returns once it is healthy."""

    def __init__(self, workdir: Path, port: int | None = None, **server_env: str):
        self.workdir = workdir
        self.home = workdir / "prefect-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_url = f"{self.url}/api"
        self.server_env = server_env
        self.processes: list[Process] = []

    def env(self, **extra: str) -> dict[str, str]:
        return clean_env(self.home, self.api_url, **extra)

    def spawn(self, name: str, args: list[str], cwd: Path = REPO, **env: str) -> Process:
        """Start a long-running child (server, worker); stopped by `stop()`."""
        log_path = self.workdir / f"{name}.log"
        log = open(log_path, "ab")  # noqa: SIM115 - closed by Process.stop
        popen = subprocess.Popen(args, cwd=cwd, env=self.env(**env), stdout=log,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
        proc = Process(name, popen, log_path, log)
        self.processes.append(proc)
        return proc

    def start(self, timeout: float = 120.0) -> PrefectServer:
        server = self.spawn("server", [
            sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
            "--port", str(self.port)], **self.server_env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server.popen.poll() is not None:
                raise RuntimeError(f"prefect server exited early:\n{server.log()[-3000:]}")
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"prefect server not healthy after {timeout} s")

    def prefect(self, *args: str, cwd: Path = REPO, timeout: float = 180,
                **env: str) -> subprocess.CompletedProcess:
        """Run one `prefect` CLI command against this server (no prompts)."""
        return subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", *args], cwd=cwd,
                              env=self.env(**env), capture_output=True, text=True,
                              timeout=timeout, check=False, stdin=subprocess.DEVNULL)

    def python(self, *args: str, cwd: Path = REPO, timeout: float = 180,
               **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=cwd, env=self.env(**env),
                              capture_output=True, text=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL)

    def worker(self, pool: str = "pollcat", limit: int = 4, **env: str) -> Process:
        """A process worker that polls every second (the default is 10 s)."""
        env.setdefault("PREFECT_WORKER_QUERY_SECONDS", "1")
        return self.spawn(f"worker-{len(self.processes)}", [
            sys.executable, "-m", "prefect", "worker", "start", "--pool", pool,
            "--limit", str(limit)], **env)

    def api(self, method: str, path: str, **kwargs) -> httpx.Response:
        """One call of the server's REST API. A 429, 502 or 503 is retried up to 5 times with
        backoff, as Prefect's own client does: the server answers 503 when its SQLite database
        is busy, which a CI rehearsal under load met once on a PATCH of a deployment."""
        for attempt in range(API_RETRIES + 1):
            r = httpx.request(method, f"{self.api_url}{path}", timeout=30, **kwargs)
            if r.status_code not in RETRYABLE_STATUS or attempt == API_RETRIES:
                break
            time.sleep(min(8.0, 0.5 * 2 ** attempt))
        r.raise_for_status()
        return r

    def stop(self) -> None:
        """Workers first (SIGINT stops them promptly), then the server."""
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()
