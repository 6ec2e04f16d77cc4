"""The Prefect flows on a real (test) Prefect server against the simulated facility."""

from __future__ import annotations

import json

import pytest

from pollcat.blocks import DeliveryTarget, PollcatFacility
from pollcat.flows.deliver import deliver_download
from pollcat.flows.sweep import sweep
from tests.conftest import scenario
from tests.support import delivered_files, statuses

ALICE = {"user": "simple/alice", "transport": "globus", "file_name": "alice_run42",
         "email": "alice@example.org", "items": [{"investigation": "INV-001", "dataset": "run-42"}]}
BOB = {"user": "simple/bob", "transport": "scarf", "file_name": "bob_all",
       "email": "bob@example.org", "items": [{"investigation": "INV-002"}]}

pytestmark = pytest.mark.prefect


def _blocks(sim, tmp_path, name: str) -> None:
    for t in ("globus", "scarf"):
        DeliveryTarget(url=f"file://{tmp_path / 'out' / t}",
                       storage_options={"auto_mkdir": True},
                       custom_value="Your data: {path}").save(f"{name}-{t}", overwrite=True)
    PollcatFacility(facility_name="LILS", icat_url=sim.url, ids_url=sim.url,
                    topcat_url=sim.url, username="pollcat", password="pollpass",
                    routes={"globus": f"{name}-globus", "scarf": f"{name}-scarf"},
                    state_dir=str(tmp_path / "state"), poll_budget_seconds=5,
                    timeout_seconds=10).save(name, overwrite=True)


def test_sweep_flow_delivers_isolates_and_reports(make_sim, tmp_path):
    scn = scenario(downloads=[ALICE, BOB], topcat={
        "poll_delay_s": 0, "poll_interval_wait_s": 0.2,
        "mail": {"bodies": {"globus": "Dear ${userName}: ${customValue}"}}})
    scn["investigations"][1]["datasets"][0]["datafiles"].append(
        {"name": "bad\x01name", "content": "x"})  # makes bob's download fail permanently
    sim = make_sim(scn)
    _blocks(sim, tmp_path, "flowtest")
    states = []
    for _ in range(5):
        states.append(sweep(facility="flowtest", return_state=True))
        st = statuses(sim.url)
        if "EXPIRED" in st.values() and "COMPLETE" in st.values():
            break
    alice_id, bob_id = sorted(st)
    assert st == {alice_id: "COMPLETE", bob_id: "EXPIRED"}
    assert len(delivered_files(tmp_path / "out/globus")) == 2
    mail = [m for m in sim.facility.mail_outbox if m["download_id"] == alice_id]
    assert len(mail) == 1 and mail[0]["body"].startswith("Dear Alice Smith: Your data: file://")
    # the sweep that expired bob's download is a Failed run saying which download failed
    assert states[-1].is_failed() and str(bob_id) in states[-1].message
    # its result is the failure itself (a list there made the deployment's engine crash with
    # "Unexpected result for failed state")
    from prefect.exceptions import FailedRun

    with pytest.raises(FailedRun, match="failed permanently"):
        states[-1].result()
    assert all(s.is_completed() for s in states[:-1])

    from prefect.client.orchestration import get_client
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def latest():
        async with get_client() as client:
            return await client.read_latest_artifacts()

    arts = {a.key: a for a in run_coro_as_sync(latest())}
    assert arts["pollcat-sweep-lils"].type == "table"
    status = json.loads(arts["pollcat-status-lils"].data)
    by_id = {row["download_id"]: row for row in status}
    assert by_id[bob_id]["state"] == "expired" and "bad" in by_id[bob_id]["reason"]
    assert by_id[alice_id]["state"] == "completed"
    # an idle sweep (nothing to do) does not overwrite what the operator reads
    sweep(facility="flowtest")
    again = {a.key: a for a in run_coro_as_sync(latest())}
    assert again["pollcat-sweep-lils"].id == arts["pollcat-sweep-lils"].id
    assert again["pollcat-status-lils"].id == arts["pollcat-status-lils"].id

    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    async def failed_task_and_logs():
        async with get_client() as client:
            runs = await client.read_task_runs(task_run_filter=TaskRunFilter(
                name=TaskRunFilterName(any_=[f"failed-LILS-{bob_id}"])))
            logs = await client.read_logs()
            return runs, logs

    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    runs, logs = run_coro_as_sync(failed_task_and_logs())
    assert runs and runs[0].state.is_failed() and "bad" in runs[0].state.message
    # pollcat's own warnings reach the run logs an operator reads
    pollcat_logs = [lg for lg in logs if lg.name.startswith("pollcat")]
    assert any(f"download {bob_id}: expiring" in lg.message for lg in pollcat_logs)
    assert all(lg.flow_run_id for lg in pollcat_logs)


def test_deliver_flow_by_id_and_masked_secrets(make_sim, tmp_path):
    sim = make_sim(scenario(downloads=[ALICE]))
    _blocks(sim, tmp_path, "bytest")
    (download_id,) = statuses(sim.url)
    row = None
    for _ in range(5):
        row = deliver_download(download_id=download_id, facility="bytest")
        if row["outcome"] == "completed":
            break
    assert row["outcome"] == "completed" and row["files"] == 2
    assert statuses(sim.url)[download_id] == "COMPLETE"

    from prefect.client.orchestration import get_client
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def doc():
        async with get_client() as client:
            return await client.read_block_document_by_name("bytest", "pollcat-facility",
                                                             include_secrets=False)

    data = run_coro_as_sync(doc()).data
    assert data["password"] != "pollpass" and "pollpass" not in str(data)


def test_check_flow_passes_and_fails_by_the_blocks(make_sim, tmp_path):
    from pollcat.flows.check import check

    sim = make_sim(scenario())
    _blocks(sim, tmp_path, "checktest")
    for t in ("globus", "scarf"):
        (tmp_path / "out" / t).mkdir(parents=True)
    lines = check(facility="checktest")
    assert any("logged in as simple/pollcat" in line for line in lines)
    DeliveryTarget(url=f"file://{tmp_path / 'nowhere'}").save("checktest-scarf",
                                                              overwrite=True)
    state = check(facility="checktest", return_state=True)
    assert state.is_failed() and "target scarf reachable" in state.message


def test_condition_events_for_operators(make_sim, tmp_path, monkeypatch):
    """A held target, a download expired, a restore waiting past alert_waiting_hours: each is
    a pollcat event that an automation matches."""
    import pollcat.tasks.report as report
    from pollcat.pipeline import Outcome
    from pollcat.states import OutcomeKind
    from tests.support import pipeline_for

    sent: list[tuple[str, dict]] = []
    monkeypatch.setattr(report, "emit_event",
                        lambda event, resource, payload: sent.append((event, resource)))
    sim = make_sim(scenario())
    pipe = pipeline_for(sim, tmp_path)
    pipe.state.update(3, first_seen="2000-01-01T00:00:00+00:00")
    pipe.state.update(4)
    outcomes = [Outcome(1, transport="globus", outcome=OutcomeKind.HELD, reason="full"),
                Outcome(2, transport="globus", outcome=OutcomeKind.HELD, reason="full"),
                Outcome(3, transport="globus", outcome=OutcomeKind.WAITING),
                Outcome(4, transport="globus", outcome=OutcomeKind.WAITING),
                Outcome(5, transport="globus", outcome=OutcomeKind.EXPIRED, reason="bad")]
    assert report.emit_condition_events(pipe, outcomes) == 3
    assert [e for e, _ in sent] == ["pollcat.target.held", "pollcat.download.stuck",
                                    "pollcat.download.expired"]
    assert sent[0][1]["prefect.resource.id"] == "pollcat.target.LILS.globus"
    assert sent[1][1]["prefect.resource.id"] == "pollcat.download.LILS.3"
