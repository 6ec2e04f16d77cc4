"""Test helpers: talk to the simulated facility as an admin, build pipelines against it."""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from pollcat.config import FacilityConfig, PipelineConfig, TargetConfig
from pollcat.pipeline import Pipeline

ADMIN = ("pollcat", "pollpass")


def login(url: str, user: str = "pollcat", password: str = "pollpass") -> str:
    creds = {"plugin": "simple", "credentials": [{"username": user}, {"password": password}]}
    r = requests.post(f"{url}/icat/session", data={"json": json.dumps(creds)}, timeout=10)
    r.raise_for_status()
    return r.json()["sessionId"]


def downloads(url: str, facility: str = "LILS") -> dict[int, dict[str, Any]]:
    sid = login(url)
    r = requests.get(f"{url}/topcat/admin/downloads", params={
        "facilityName": facility, "sessionId": sid, "queryOffset": "where 1 = 1"}, timeout=10)
    r.raise_for_status()
    return {d["id"]: d for d in r.json()}


def statuses(url: str) -> dict[int, str]:
    return {i: d["status"] for i, d in downloads(url).items()}


def pipeline_for(sim, tmp_path: Path, *, transports=("globus",), state_dir: Path | None = None,
                 facility_kw: dict | None = None, target_url: str | None = None,
                 **target_kw: Any) -> Pipeline:
    """A pipeline against `sim`; each transport's target is `<base>/<transport>`, where the base
    is `file://<tmp_path>/target` unless `target_url` (e.g. an `sftp://` URL) is given.
    `target_kw` go to every TargetConfig (`storage_options`, `source`, ...)."""
    return Pipeline(pipeline_config(tmp_path, sim.url, transports=transports,
                                    state_dir=state_dir, facility_kw=facility_kw,
                                    target_url=target_url, **target_kw))


def pipeline_config(tmp_path: Path, url: str = "http://127.0.0.1:9", *, transports=("globus",),
                    state_dir: Path | None = None, facility_kw: dict | None = None,
                    target_url: str | None = None, **target_kw: Any) -> PipelineConfig:
    """The configuration `pipeline_for` uses, with every service at `url`."""
    base = target_url.rstrip("/") if target_url else f"file://{tmp_path / 'target'}"
    fac = FacilityConfig(**{"facility_name": "LILS", "icat_url": url, "ids_url": url,
                            "topcat_url": url, "username": "pollcat",
                            "password": "pollpass", "timeout_seconds": 10,
                            **(facility_kw or {})})
    routes = {t: TargetConfig(url=f"{base}/{t}", **target_kw)
              for t in transports}
    return PipelineConfig(facility=fac, routes=routes, state_dir=state_dir or tmp_path / "state",
                          poll_budget_seconds=5.0, max_prepare_attempts=3)


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """Poll until `predicate()` is truthy (TopCAT's StatusCheck and mail are asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.05)


def wait_status(url: str, status: str, timeout: float = 30.0) -> None:
    wait_for(lambda: all(s == status for s in statuses(url).values()), timeout,
             f"every download {status}")


def sweep_until_complete(pipe: Pipeline, url: str, ids: list[int] | None = None,
                         max_sweeps: int = 10) -> list:
    """Sweep until TopCAT shows the downloads COMPLETE; returns every sweep's outcomes."""
    history = []
    for _ in range(max_sweeps):
        wait_for(lambda: "PREPARING" not in statuses(url).values(), 10, "TopCAT to prepare")
        history.append(pipe.sweep())
        st = statuses(url)
        wanted = ids if ids is not None else list(st)
        if all(st[i] == "COMPLETE" for i in wanted):
            return history
    raise AssertionError(f"not complete after {max_sweeps} sweeps: {statuses(url)}; "
                         f"last outcomes {history[-1]}")


def crc_hex(path: Path) -> str:
    crc = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return format(crc, "x")


def delivered_files(root: Path) -> dict[str, Path]:
    """Relative path → file for everything under root except pollcat's own markers."""
    return {str(p.relative_to(root)): p for p in root.rglob("*")
            if p.is_file() and not p.name.startswith(".pollcat") and
            not p.name.endswith(".pollcat-part") and p.name != "pollcat-manifest.json"}


class BytesSource:
    """A `Readable` over bytes, opened at an offset: a stand-in for an IDS stream."""

    def __init__(self, data: bytes, offset: int = 0):
        self.data, self.pos = data, offset

    def read(self, n: int) -> bytes:
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out

    def close(self) -> None:
        pass
