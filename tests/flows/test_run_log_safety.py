"""Prefect's run logs (what the UI and the API show) carry no password, session id or preparedId,
even with pollcat's and the libraries' loggers forwarded at DEBUG (PREFECT_LOGGING_EXTRA_LOGGERS).
"""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from prefect.settings import get_current_settings

from pollcat.blocks import DeliveryTarget, PollcatFacility
from pollcat.flows.deliver import deliver_download
from tests.conftest import scenario
from tests.prefect_server.server import clean_env
from tests.support import downloads, statuses

ALICE = {"user": "simple/alice", "transport": "globus", "file_name": "alice_run42",
         "email": "alice@example.org", "items": [{"investigation": "INV-001", "dataset": "run-42"}]}
FORWARDED = ("pollcat", "icat", "urllib3", "fsspec")

pytestmark = pytest.mark.prefect


@pytest.fixture
def forwarded_at_debug(monkeypatch):
    """What `PREFECT_LOGGING_EXTRA_LOGGERS=pollcat,icat,urllib3,fsspec` sets up at start."""
    api_handlers = logging.getLogger("prefect.extra").handlers
    for name in FORWARDED:
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "level", logging.DEBUG)
        for h in api_handlers:
            logger.addHandler(h)
    yield
    for name in FORWARDED:
        for h in api_handlers:
            logging.getLogger(name).removeHandler(h)


def _run_logs(flow_run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler
    from prefect.utilities.asyncutils import run_coro_as_sync

    APILogHandler().flush()

    async def read():
        async with get_client() as client:
            return await client.read_logs(LogFilter(
                flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)

    return [f"{log.name}: {log.message}" for log in run_coro_as_sync(read())]


def test_flow_run_logs_hold_no_secret(make_sim, tmp_path, forwarded_at_debug):
    sim = make_sim(scenario(downloads=[ALICE]))
    sim.add_fault(kind="error", service="ids", endpoint="isPrepared", status=502, count=1)
    DeliveryTarget(url=f"file://{tmp_path / 'out'}").save("logsafe-globus", overwrite=True)
    PollcatFacility(facility_name="LILS", icat_url=sim.url, ids_url=sim.url,
                    topcat_url=sim.url, username="pollcat", password="pollpass",
                    routes={"globus": "logsafe-globus"}, state_dir=str(tmp_path / "state"),
                    poll_budget_seconds=5, timeout_seconds=10).save("logsafe", overwrite=True)
    (download_id,) = statuses(sim.url)
    logs: list[str] = []
    for _ in range(5):
        state = deliver_download(download_id=download_id, facility="logsafe",
                                 return_state=True)
        logs += _run_logs(state.state_details.flow_run_id)
        if statuses(sim.url)[download_id] == "COMPLETE":
            break
    assert statuses(sim.url)[download_id] == "COMPLETE"
    text = "\n".join(logs)
    assert "urllib3.connectionpool" in text and "sessionId=***" in text  # forwarded, redacted
    secrets = {"pollpass"} | set(sim.facility.sessions._sessions)
    secrets |= set(sim.facility.prepared._records)
    for d in downloads(sim.url).values():
        secrets |= {d.get("sessionId"), d.get("preparedId")} - {None}
    assert sorted(s for s in secrets if s in text) == []


#: README "Operate": what a worker's environment sets to have these loggers in the run logs at
#: DEBUG. PREFECT_LOGGING_EXTRA_LOGGERS only gives them Prefect's API handler, not a level:
#: they keep the root logger's (WARNING) unless PREFECT_LOGGING_ROOT_LEVEL lowers it
#: (PREFECT_LOGGING_LEVEL sets Prefect's own loggers only).
DEBUG_ENV = {"PREFECT_LOGGING_EXTRA_LOGGERS": ",".join(FORWARDED),
             "PREFECT_LOGGING_ROOT_LEVEL": "DEBUG"}


def test_sweep_logs_at_debug_with_the_readme_settings(make_sim, tmp_path):
    """A sweep flow in a process of its own, logging configured by Prefect from the README's
    environment alone (no test fixture touches a logger): pollcat's and urllib3's DEBUG lines
    are in the run logs the API returns, and no password, session id or preparedId is."""
    sim = make_sim(scenario(downloads=[ALICE]))
    DeliveryTarget(url=f"file://{tmp_path / 'out'}").save("logdebug-globus", overwrite=True)
    # a ledger database: its lease is one of pollcat's DEBUG lines in every delivery
    PollcatFacility(facility_name="LILS", icat_url=sim.url, ids_url=sim.url,
                    topcat_url=sim.url, username="pollcat", password="pollpass",
                    routes={"globus": "logdebug-globus"}, state_dir=str(tmp_path / "state"),
                    ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}",
                    poll_budget_seconds=10, timeout_seconds=10).save("logdebug", overwrite=True)
    (download_id,) = statuses(sim.url)
    home = tmp_path / "prefect-home"
    home.mkdir()
    env = clean_env(home, str(get_current_settings().api.url), **DEBUG_ENV)
    code = ("from pollcat.flows.sweep import sweep\n"
            "state = sweep(facility='logdebug', return_state=True)\n"
            "print('FLOW_RUN', state.state_details.flow_run_id)\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, timeout=120,
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert statuses(sim.url)[download_id] == "COMPLETE"
    (flow_run_id,) = [line.split()[1] for line in run.stdout.splitlines()
                      if line.startswith("FLOW_RUN ")]

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def read():
        async with get_client() as client:
            return await client.read_logs(LogFilter(
                flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)

    logs = run_coro_as_sync(read())
    debug = {log.name.split(".")[0] for log in logs if log.level == logging.DEBUG}
    assert {"pollcat", "urllib3"} <= debug, sorted((log.name, log.level) for log in logs)
    text = "\n".join(f"{log.name}: {log.message}" for log in logs)
    assert "sessionId=***" in text and "preparedId=***" in text  # the URLs were there, redacted
    secrets = {"pollpass"} | set(sim.facility.sessions._sessions)
    secrets |= set(sim.facility.prepared._records)
    for d in downloads(sim.url).values():
        secrets |= {d.get("sessionId"), d.get("preparedId")} - {None}
    assert sorted(s for s in secrets if s in text) == []
    # the worker's stderr (the console handler, at DEBUG for every library now) is redacted too
    assert sorted(s for s in secrets if s in run.stderr) == []
