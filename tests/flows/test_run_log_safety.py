"""Prefect's run logs (what the UI and the API show) carry no password, session id or preparedId,
even with pollcat's and the libraries' loggers forwarded at DEBUG (PREFECT_LOGGING_EXTRA_LOGGERS).
"""

from __future__ import annotations

import logging

import pytest

from pollcat.blocks import DeliveryTarget, PollcatFacility
from pollcat.flows.deliver import deliver_download
from tests.conftest import scenario
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
