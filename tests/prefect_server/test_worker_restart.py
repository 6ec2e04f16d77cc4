"""`systemctl restart pollcat-worker` in the middle of a sweep: the cut-off run is marked Crashed
by bootstrap's heartbeat automation, its concurrency slot is freed, and the next scheduled sweep
delivers (without the automation every later sweep is cancelled while the slot is held)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from pollcat.deployments import alerts
from simfacility.server import running_facility
from tests.conftest import scenario
from tests.prefect_server.server import PrefectServer
from tests.support import crc_hex, delivered_files, statuses

pytestmark = [pytest.mark.prefect, pytest.mark.slow, pytest.mark.timeout(300)]

FACILITY_BLOCK = "lils-restart"
DOWNLOAD = {"user": "simple/alice", "transport": "globus", "file_name": "alice_run42",
            "items": [{"investigation": "INV-001", "dataset": "run-42"}]}


def _runs(server: PrefectServer) -> list[dict]:
    return server.api("POST", "/flow_runs/filter", json={"sort": "START_TIME_ASC"}).json()


def _save_blocks(server: PrefectServer, sim_url: str, tmp) -> None:
    code = f"""
from pollcat.blocks import DeliveryTarget, PollcatFacility
DeliveryTarget(url='file://{tmp}/target').save('restart-globus')
PollcatFacility(facility_name='LILS', icat_url={sim_url!r}, ids_url={sim_url!r},
    topcat_url={sim_url!r}, username='pollcat', password='pollpass',
    routes={{'globus': 'restart-globus'}}, state_dir='{tmp}/state',
    poll_budget_seconds=150).save({FACILITY_BLOCK!r})
"""
    res = server.python("-c", code)
    assert res.returncode == 0, res.stdout + res.stderr


def test_a_sweep_cut_off_by_a_worker_restart_does_not_block_the_schedule(
        prefect_server: PrefectServer, tmp_path):
    server = prefect_server
    # the restore takes 100 s from the facility's start and the sweep waits for it: the first
    # sweep is mid-run when the worker restarts. (60 s was too short once `bootstrap --deploy`
    # anchored the first sweep 20 s after the deploy: on a loaded 2-core CI host the restore
    # was done before the first sweep began, and it completed before the restart.)
    scn = scenario(downloads=[DOWNLOAD], restore={"latency_s": 100, "bytes_per_s": 1e9})
    with running_facility(scn, tmp_path / "ids") as sim:
        assert server.python("-m", "deployments.bootstrap").returncode == 0
        _save_blocks(server, sim.url, tmp_path)
        res = server.python("-m", "deployments.bootstrap", "--deploy", "--sweep-interval", "10")
        assert res.returncode == 0, res.stdout + res.stderr
        worker = server.worker()
        deadline = time.monotonic() + 90
        while not any(r["state_type"] == "RUNNING" for r in _runs(server)):
            assert time.monotonic() < deadline, worker.log()[-3000:]
            time.sleep(1)
        first = next(r for r in _runs(server) if r["state_type"] == "RUNNING")
        assert statuses(sim.url) == {1: "RESTORING"}, "the restore ended before the cut"
        time.sleep(3)
        # what systemd does (pollcat-worker.service): SIGINT to the main process, then restart
        t_stop = time.monotonic()
        os.kill(worker.popen.pid, signal.SIGINT)
        worker.popen.wait(15)
        worker.stop()
        server.worker()
        assert server.api("GET", f"/flow_runs/{first['id']}").json()["state_type"] == "RUNNING"

        crashed_after = None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            state = server.api("GET", f"/flow_runs/{first['id']}").json()["state"]
            if crashed_after is None and state["type"] == "CRASHED":
                crashed_after = time.monotonic() - t_stop
                assert "no heartbeat" in state["message"]
            later = [r for r in _runs(server) if r["id"] != first["id"]
                     and r["state_type"] == "COMPLETED" and r["auto_scheduled"]]
            if later and statuses(sim.url) == {1: "COMPLETE"}:
                break
            time.sleep(1)
        else:
            pytest.fail(f"no later sweep completed: first run {state}, TopCAT {statuses(sim.url)}")
        assert crashed_after is not None
        assert crashed_after < alerts.HEARTBEAT_S * (alerts.MISSED_HEARTBEATS + 1) + 30
        files = delivered_files(tmp_path / "target")
        by_name = {df.name: df for df in sim.store.datafiles.values()}
        assert sorted(p.name for p in files.values()) == ["readme.txt", "scan_0001.nxs"]
        for path in files.values():
            df = by_name["notes/readme.txt" if path.name == "readme.txt" else path.name]
            assert path.stat().st_size == df.size
            assert int(crc_hex(path), 16) == int(df.checksum, 16)
        print(f"\nmeasured: worker restart → cut-off run marked Crashed {crashed_after:.0f} s")
