"""Run a simulated facility on 127.0.0.1 in a background thread (tests, demo, benchmarks)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from simfacility.facility import SimFacility


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class RunningFacility:
    """A facility served by uvicorn in a thread; `url` is the base URL (no trailing slash)."""

    def __init__(self, scenario: str | Path | dict[str, Any], data_dir: str | Path | None = None,
                 host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        from simfacility.app import build_app

        self.facility = SimFacility(scenario, data_dir)
        self.host = host
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        config = uvicorn.Config(build_app(self.facility), host=host, port=self.port,
                                log_level=log_level, lifespan="off", access_log=False,
                                timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="pollcat-sim",
                                        daemon=True)

    def start(self, timeout: float = 30.0) -> RunningFacility:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"simulated facility failed to start on {self.url}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"simulated facility did not start within {timeout}s")
            time.sleep(0.01)
        self.facility.start(self.url)
        return self

    def stop(self) -> None:
        self.facility.stop()
        self._server.should_exit = True
        self._thread.join(timeout=10)

    # conveniences for tests
    @property
    def store(self):
        return self.facility.store

    def add_fault(self, **spec: Any) -> Any:
        return self.facility.faults.add(spec, self.facility)


@contextlib.contextmanager
def running_facility(scenario: str | Path | dict[str, Any], data_dir: str | Path | None = None,
                     **kwargs: Any) -> Iterator[RunningFacility]:
    sim = RunningFacility(scenario, data_dir, **kwargs).start()
    try:
        yield sim
    finally:
        sim.stop()
