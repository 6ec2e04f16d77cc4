"""`make demo` as a newcomer runs it: it finishes by itself, the schedule delivered everything,
and it leaves no process behind."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from tests.prefect_server.server import REPO, clean_env
from tests.support import delivered_files

pytestmark = [pytest.mark.prefect, pytest.mark.slow, pytest.mark.timeout(240)]


def test_demo_delivers_through_the_schedule_and_stops(tmp_path):
    out = tmp_path / "demo"
    env = clean_env(tmp_path / "unused-home", "http://127.0.0.1:9/api")  # demo brings its own
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "scripts/demo.py", "--out", str(out), "--port", "0"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=200,
                         check=False, stdin=subprocess.DEVNULL)
    took = time.monotonic() - t0
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert took < 180, f"make demo took {took:.0f} s"
    # every TopCAT download COMPLETE, every delivered file matches ICAT, runs made by the schedule
    assert re.search(r"TopCAT (\d+:COMPLETE, ){5}\d+:COMPLETE\n", res.stdout), res.stdout
    for transport, count in (("globus", 10), ("scarf", 24)):
        assert re.search(rf"{transport}\s+{count} files .* {count} match ICAT", res.stdout), \
            res.stdout
        assert len(delivered_files(out / transport)) == count
    assert "(by the schedule)" in res.stdout and "(by hand)" not in res.stdout
    assert "e-mails TopCAT sent: 6" in res.stdout
    server_log = (out / "prefect" / "server.log").read_text()
    assert "Can't evaluate bulk DML" not in server_log
    # nothing the demo started is still running
    leftover = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert f"--port {_port(res.stdout)}\n" not in leftover


def _port(stdout: str) -> str:
    return re.search(r"Prefect server up after \d+ s: http://127\.0\.0\.1:(\d+)", stdout).group(1)
