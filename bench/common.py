"""Start `pollcat-sim` as its own process (so it never shares a GIL with what it measures)."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import requests
import yaml


@contextlib.contextmanager
def sim_process(scenario: dict, data_dir: str | None = None) -> Iterator[tuple[str, float]]:
    """Yields (base_url, start-up seconds) of a simulator running the scenario."""
    tmp = tempfile.mkdtemp(prefix="pollcat-bench-")
    path = Path(tmp) / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario))
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "simfacility.cli", "--scenario", str(path),
                             "--data-dir", data_dir or str(Path(tmp) / "data"),
                             "--log-level", "warning"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"serving (http://\S+)", line)
        if not m:
            raise RuntimeError(f"simulator did not start: {line!r}")
        yield m.group(1), time.monotonic() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def login(url: str, user: str, password: str) -> str:
    creds = {"plugin": "simple", "credentials": [{"username": user}, {"password": password}]}
    return requests.post(f"{url}/icat/session", data={"json": json.dumps(creds)},
                         timeout=30).json()["sessionId"]


def curl_speed(url: str, out: str = "/dev/null") -> tuple[float, int]:
    """(bytes per second, bytes) as curl reports them."""
    res = subprocess.run(["curl", "-s", "-o", out, "-w", "%{speed_download} %{size_download}",
                          url], capture_output=True, text=True, check=True)
    speed, size = res.stdout.split()
    return float(speed), int(float(size))
