"""`pollcat-sim` as a facility engineer runs it: a foreground process, stopped by a signal."""

from __future__ import annotations

import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

from simfacility.server import free_port

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "scenarios" / "demo.yaml"
URL_RE = re.compile(r"serving (http://127\.0\.0\.1:(\d+))\b")


def start_cli(*args: str, stderr) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "simfacility.cli", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=stderr, text=True)


def read_line(stream, timeout: float) -> str:
    """One line from a pipe, or fail after `timeout` seconds (readline alone could hang)."""
    q: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: q.put(stream.readline()), daemon=True).start()
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        pytest.fail(f"no line on the pipe within {timeout}s")


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "simfacility.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_serves_the_demo_and_stops_on_sigterm(tmp_path):
    port = free_port()
    log = tmp_path / "stderr.log"  # a file, not a pipe nobody drains
    with open(log, "w") as err:
        proc = start_cli("--scenario", "scenarios/demo.yaml", "--port", str(port), stderr=err)
    try:
        line = read_line(proc.stdout, timeout=60)
        m = URL_RE.search(line)
        assert m, f"no base URL in {line!r}; stderr: {log.read_text()}"
        url = m.group(1)
        assert int(m.group(2)) == port
        assert "LILS" in line and "datafiles" in line

        r = requests.get(f"{url}/ids/ping", timeout=10)
        assert (r.status_code, r.text) == (200, "IdsOK")
        r = requests.get(f"{url}/topcat/version", timeout=10)
        assert (r.status_code, r.json()) == (200, "3.2.0")
        r = requests.get(f"{url}/icat/version", timeout=10)
        assert r.status_code == 200 and r.json() == {"version": "6.2.0"}
        health = requests.get(f"{url}/sim/health", timeout=10).json()
        assert health == {"ok": True, "facility": "LILS", "twoLevel": True}

        # the scenario's six downloads were submitted through TopCAT at start-up
        creds = ('{"plugin":"simple","credentials":[{"username":"pollcat"},'
                 '{"password":"pollpass"}]}')
        sid = requests.post(f"{url}/icat/session", data={"json": creds},
                            timeout=10).json()["sessionId"]
        downloads = requests.get(f"{url}/topcat/admin/downloads",
                                 params={"facilityName": "LILS", "sessionId": sid},
                                 timeout=10).json()
        assert sorted(d["fileName"] for d in downloads) == sorted(
            d["file_name"] for d in yaml.safe_load(DEMO.read_text())["downloads"])

        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - t0 < 5
        assert "pollcat-sim: stopped" in proc.stdout.read()
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{url}/ids/ping", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_missing_scenario_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.yaml"
    res = run_cli("--scenario", str(missing), "--port", str(free_port()))
    assert res.returncode != 0
    assert "pollcat-sim:" in res.stderr
    assert "No such file or directory" in res.stderr and str(missing) in res.stderr
    assert "Traceback" not in res.stderr
    assert res.stdout == ""


def test_unknown_user_in_an_investigation_names_the_key(tmp_path):
    scn = {
        "users": [{"name": "simple/alice", "password": "alicepass"}],
        "investigations": [
            {"name": "INV-001", "users": ["simple/alice"], "datasets": []},
            {"name": "INV-002", "users": ["simple/alice", "simple/mallory"], "datasets": []},
        ],
    }
    path = tmp_path / "bad-user.yaml"
    path.write_text(yaml.safe_dump(scn))
    res = run_cli("--scenario", str(path), "--port", str(free_port()))
    assert res.returncode != 0
    assert "investigations[1].users: unknown user 'simple/mallory'" in res.stderr
    assert "Traceback" not in res.stderr


def test_yaml_syntax_error_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("facility: [LILS\nstorage: two-level\n")
    res = run_cli("--scenario", str(path))
    assert res.returncode != 0
    assert res.stderr.startswith("pollcat-sim:")
    assert str(path) in res.stderr and "line" in res.stderr
    assert "Traceback" not in res.stderr


def test_port_in_use_is_a_clear_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = run_cli("--scenario", "scenarios/demo.yaml", "--port", str(port))
    assert res.returncode != 0
    assert f"pollcat-sim: simulated facility failed to start on http://127.0.0.1:{port}" \
        in res.stderr
    assert "Traceback" not in res.stderr
