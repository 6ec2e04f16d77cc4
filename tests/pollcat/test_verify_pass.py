"""`pollcat verify`: a COMPLETE download whose files went missing or changed is reported."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import scenario
from tests.support import delivered_files, pipeline_for, statuses, wait_status

ALICE = {"user": "simple/alice", "transport": "globus", "file_name": "alice_run42",
         "email": "alice@example.org", "items": [{"investigation": "INV-001", "dataset": "run-42"}]}


def test_verify_reports_missing_and_changed_files(make_sim, tmp_path):
    sim = make_sim(scenario(downloads=[ALICE]))
    wait_status(sim.url, "RESTORING")
    pipe = pipeline_for(sim, tmp_path)
    pipe.sweep()
    assert statuses(sim.url) == {1: "COMPLETE"}
    lines: list[str] = []
    assert pipe.verify(out=lines.append) == 0
    assert "all 2 files match" in lines[0]

    files = delivered_files(tmp_path / "target/globus")
    scan = next(p for r, p in files.items() if r.endswith("scan_0001.nxs"))
    readme = next(p for r, p in files.items() if r.endswith("readme.txt"))
    readme.unlink()
    with open(scan, "r+b") as fh:  # same size, other bytes
        fh.seek(10)
        fh.write(b"X")
    lines.clear()
    assert pipe.verify(out=lines.append) == 1
    assert "PROBLEM" in lines[0] and "1 missing" in lines[0] and "1 not matching" in lines[0]

    env = dict(os.environ, POLLCAT_PASSWORD="pollpass")
    res = subprocess.run(
        [sys.executable, "-m", "pollcat.cli", "verify", "--icat-url", sim.url, "--ids-url",
         sim.url, "--topcat-url", sim.url, "--facility-name", "LILS", "--username", "pollcat",
         "--route", f"globus=file://{tmp_path / 'target/globus'}",
         "--state-dir", str(tmp_path / "state")],
        env=env, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 1 and "1 missing" in res.stdout, res.stdout + res.stderr
