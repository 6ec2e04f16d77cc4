"""A worker killed mid-file: the rerun resumes the part file, duplicates nothing, and TopCAT
gets COMPLETE (and the user one e-mail) exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from pollcat.state import StateStore
from tests.conftest import scenario
from tests.support import (
    crc_hex,
    delivered_files,
    pipeline_for,
    statuses,
    wait_for,
    wait_status,
)

SIZE = 24 << 20
BIG = {"user": "simple/alice", "transport": "globus", "file_name": "big",
       "email": "alice@example.org", "items": [{"investigation": "INV-001", "dataset": "big"}]}


def test_killed_sweep_resumes_without_duplicates(make_sim, tmp_path):
    scn = scenario(downloads=[BIG])
    scn["investigations"][0]["datasets"].append(
        {"name": "big", "datafiles": [{"name": "big.raw", "size": SIZE}]})
    sim = make_sim(scn)
    wait_status(sim.url, "RESTORING")
    # the first getData sends 8 MiB, then goes quiet for a minute: we kill the worker then
    sim.add_fault(kind="stall", service="ids", endpoint="getData", after_bytes=8 << 20,
                  seconds=60, count=1)
    out, state = tmp_path / "target" / "globus", tmp_path / "state"
    env = dict(os.environ, POLLCAT_PASSWORD="pollpass")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pollcat.cli", "sweep", "--icat-url", sim.url, "--ids-url",
         sim.url, "--topcat-url", sim.url, "--facility-name", "LILS", "--username", "pollcat",
         "--route", f"globus=file://{out}", "--state-dir", str(state),
         "--poll-budget-seconds", "10", "--timeout-seconds", "120"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        part = wait_for(lambda: next((p for p in out.rglob("*.pollcat-part")
                                      if p.stat().st_size >= 8 << 20), None),
                        timeout=60, what="a part file with 8 MiB")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert part.exists() and statuses(sim.url) == {1: "RESTORING"}
    assert not delivered_files(out)  # nothing in place yet, only the part file

    pipe = pipeline_for(sim, tmp_path)  # same target and state dir as the killed worker
    (outcome,) = pipe.sweep()
    assert outcome.outcome == "completed", outcome
    assert outcome.bytes < SIZE  # the rerun fetched only what the part file lacked
    files = delivered_files(out)
    assert list(files) == ["alice/big/INV-001/1/big/big.raw"]
    df = next(d for d in sim.store.datafiles.values() if d.name == "big.raw")
    assert files["alice/big/INV-001/1/big/big.raw"].stat().st_size == SIZE
    assert int(crc_hex(files["alice/big/INV-001/1/big/big.raw"]), 16) == int(df.checksum, 16)
    assert not list(out.rglob("*.pollcat-part"))
    assert statuses(sim.url) == {1: "COMPLETE"}
    assert pipe.sweep() == []
    # both sweeps have returned and the killed worker is gone: TopCAT took one COMPLETE
    puts = sim.facility.topcat.admin_status_puts
    assert [put for put in puts if put[1] == "COMPLETE"] == [(1, "COMPLETE")], puts
    wait_for(lambda: sim.facility.mail_outbox, what="the ready e-mail")
    assert [m["download_id"] for m in sim.facility.mail_outbox] == [1]
    assert StateStore(state, "LILS").get(1).verdict == "completed"
