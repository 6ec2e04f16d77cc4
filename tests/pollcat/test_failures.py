"""Failure paths: COMPLETE refused after a good delivery, transient errors past the deadline,
ICAT sessions that expire between sweeps."""

from __future__ import annotations

from pollcat.state import StateStore
from tests.conftest import scenario
from tests.support import delivered_files, pipeline_for, statuses, wait_status

ALICE = {"user": "simple/alice", "transport": "globus", "file_name": "alice_run42",
         "email": "alice@example.org", "items": [{"investigation": "INV-001", "dataset": "run-42"}]}


def test_complete_refused_then_completed_without_copying(make_sim, tmp_path):
    sim = make_sim(scenario(downloads=[ALICE]))
    wait_status(sim.url, "RESTORING")
    sim.add_fault(kind="error", service="topcat", endpoint="admin/download/*/status",
                  method="PUT", status=500, count=1, message="database is down")
    pipe = pipeline_for(sim, tmp_path)
    (first,) = pipe.sweep()
    assert first.outcome == "retry" and "database is down" in first.reason
    assert statuses(sim.url) == {1: "RESTORING"}
    assert len(delivered_files(tmp_path / "target/globus")) == 2
    (second,) = pipe.sweep()
    assert second.outcome == "completed"
    assert second.bytes == 0 and second.skipped_files == 2  # nothing copied again
    assert statuses(sim.url) == {1: "COMPLETE"}


def test_transient_errors_past_the_deadline_expire(make_sim, tmp_path):
    sim = make_sim(scenario(downloads=[ALICE]))
    wait_status(sim.url, "RESTORING")
    sim.add_fault(kind="error", service="ids", endpoint="getData", status=500,
                  message="disk controller on fire")
    pipe = pipeline_for(sim, tmp_path)
    (first,) = pipe.sweep()
    assert first.outcome == "retry" and statuses(sim.url) == {1: "RESTORING"}
    StateStore(tmp_path / "state", "LILS").update(1, first_seen="2000-01-01T00:00:00+00:00")
    (second,) = pipe.sweep()
    assert second.outcome == "expired"
    assert "disk controller on fire" in second.reason and "download 1" in second.reason
    assert statuses(sim.url) == {1: "EXPIRED"}
    assert not delivered_files(tmp_path / "target/globus")


def test_expired_icat_session_is_replaced(make_sim, tmp_path):
    sim = make_sim(scenario(downloads=[ALICE]))
    wait_status(sim.url, "RESTORING")
    pipe = pipeline_for(sim, tmp_path)
    pipe.clients.icat.session_id()  # logged in
    sim.add_fault(kind="expire_sessions", user="simple/pollcat")
    (out,) = pipe.sweep()
    assert out.outcome == "completed", out
    assert statuses(sim.url) == {1: "COMPLETE"}


def test_refused_expired_is_set_on_the_next_sweep(make_sim, tmp_path):
    scn = scenario(downloads=[ALICE])
    scn["investigations"][0]["datasets"][0]["datafiles"].append(
        {"name": "../escape", "content": "x"})  # a permanent error
    sim = make_sim(scn)
    wait_status(sim.url, "RESTORING")
    sim.add_fault(kind="error", service="topcat", endpoint="admin/download/*/status",
                  method="PUT", status=500, count=1, message="database is down")
    pipe = pipeline_for(sim, tmp_path)
    (first,) = pipe.sweep()
    assert first.outcome == "retry" and "database is down" in first.reason
    assert statuses(sim.url) == {1: "RESTORING"}
    (second,) = pipe.sweep()  # the verdict stands; only the EXPIRED call is repeated
    assert second.outcome == "expired" and "../escape" in second.reason
    assert statuses(sim.url) == {1: "EXPIRED"}
    assert pipe.sweep() == []
    assert not delivered_files(tmp_path / "target/globus")
