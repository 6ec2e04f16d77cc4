"""The systemd units' commands run, and their stop signal, sent the way systemd sends it (to the
main process only, KillMode=mixed), really stops the process well within TimeoutStopSec."""

from __future__ import annotations

import configparser
import os
import shlex
import signal
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.prefect_server.server import REPO, PrefectServer

pytestmark = [pytest.mark.prefect, pytest.mark.timeout(180)]
UNITS = REPO / "deploy" / "systemd"
VENV_PREFECT = "/opt/pollcat/venv/bin/prefect"


def _unit(name: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read(UNITS / name)
    return parser["Service"]


def _command(service: configparser.SectionProxy, **replace: str) -> list[str]:
    """ExecStart as this test machine can run it: our venv's prefect, %H expanded."""
    args = shlex.split(service["ExecStart"].replace("%H", socket.gethostname()))
    assert args[0] == VENV_PREFECT, args
    for flag, value in replace.items():
        args[args.index(flag) + 1] = value
    return [sys.executable, "-m", "prefect", *args[1:]]


def _stop_main_process(popen, service: configparser.SectionProxy) -> float:
    sig = signal.Signals[service["KillSignal"]]
    t0 = time.monotonic()
    os.kill(popen.pid, sig)
    popen.wait(int(service["TimeoutStopSec"]))
    return time.monotonic() - t0


def test_worker_unit_starts_a_worker_that_its_stop_signal_stops(prefect_server: PrefectServer):
    service = _unit("pollcat-worker.service")
    assert service["KillMode"] == "mixed" and "--limit" in service["ExecStart"]
    res = prefect_server.python("-m", "deployments.bootstrap")
    assert res.returncode == 0, res.stderr
    worker = prefect_server.spawn("unit-worker", _command(service))
    deadline = time.monotonic() + 60
    while "started!" not in worker.log():
        assert worker.popen.poll() is None and time.monotonic() < deadline, worker.log()
        time.sleep(0.5)
    workers = prefect_server.api("POST", "/work_pools/pollcat/workers/filter", json={}).json()
    assert f"pollcat-{socket.gethostname()}" in [w["name"] for w in workers]
    took = _stop_main_process(worker.popen, service)
    assert took < 15, f"worker took {took:.1f} s to stop"
    assert "stopped!" in worker.log()


def test_server_unit_starts_a_server_that_its_stop_signal_stops(tmp_path):
    service = _unit("prefect-server.service")
    server = PrefectServer(tmp_path)
    proc = server.spawn("unit-server", _command(service, **{"--host": "127.0.0.1",
                                                            "--port": str(server.port)}))
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{server.api_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.popen.poll() is None and time.monotonic() < deadline, proc.log()
            time.sleep(0.5)
        took = _stop_main_process(proc.popen, service)
        assert took < 10, f"server took {took:.1f} s to stop"
    finally:
        server.stop()


def test_env_examples_name_only_settings_prefect_knows():
    from prefect.settings import Settings
    from prefect.settings.legacy import _get_valid_setting_names

    known = _get_valid_setting_names(Settings)
    for example in UNITS.glob("*.env.example"):
        for line in example.read_text().splitlines():
            line = line.lstrip("# ").strip()
            if line.startswith("PREFECT_") and "=" in line:
                assert line.split("=", 1)[0] in known, f"{example.name}: {line}"


def test_unit_files_are_where_the_readme_says():
    readme = (REPO / "README.md").read_text()
    for unit in ("prefect-server.service", "pollcat-worker.service"):
        assert (UNITS / unit).is_file() and f"deploy/systemd/{unit}" in readme
    assert Path(VENV_PREFECT).name == "prefect"
