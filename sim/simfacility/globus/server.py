"""Run the Globus emulation on 127.0.0.1 in a background thread (tests, demo)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from simfacility.globus.app import build_app
from simfacility.globus.state import GlobusState
from simfacility.server import free_port


class RunningGlobus:
    """Globus Auth + Transfer served by uvicorn in a thread; `url` has no trailing slash."""

    def __init__(self, spec: dict[str, Any] | None = None, host: str = "127.0.0.1",
                 port: int = 0, log_level: str = "warning", mount: str = ""):
        """`mount` (e.g. "/globus") serves the emulation below a prefix, as the facility app
        mounts it; `url` then includes the prefix."""
        self.state = GlobusState(spec)
        self.host = host
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}{mount.rstrip('/')}"
        app = build_app(self.state)
        if mount:
            app = Starlette(routes=[Mount(mount.rstrip("/"), app=app)])
        config = uvicorn.Config(app, host=host, port=self.port,
                                log_level=log_level, lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="sim-globus", daemon=True)

    @property
    def auth_url(self) -> str:
        return f"{self.url}/auth/"

    @property
    def transfer_url(self) -> str:
        return f"{self.url}/transfer/"

    def sdk_environment(self) -> dict[str, str]:
        """The globus-sdk variables that point its unchanged clients at this emulation."""
        return {"GLOBUS_SDK_SERVICE_URL_AUTH": self.auth_url,
                "GLOBUS_SDK_SERVICE_URL_TRANSFER": self.transfer_url}

    def start(self, timeout: float = 30.0) -> RunningGlobus:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"simulated Globus failed to start on {self.url}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"simulated Globus did not start within {timeout}s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


@contextlib.contextmanager
def running_globus(spec: dict[str, Any] | None = None, **kwargs: Any) -> Iterator[RunningGlobus]:
    """Start the emulation on a free port for the duration of the block."""
    server = RunningGlobus(spec, **kwargs).start()
    try:
        yield server
    finally:
        server.stop()
