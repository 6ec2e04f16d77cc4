"""The per-download state machine: one deadline per sweep, outcomes that are not exceptions,
configuration problems that stop the sweep without touching a download, routine events (a
session expiring) that never expire one, verdicts that settle, and an admin's resume."""

from __future__ import annotations

import time

import pytest
import requests

from pollcat.config import FacilityConfig, PipelineConfig, TargetConfig
from pollcat.errors import AccountRefused, ConfigurationError
from pollcat.pipeline import Pipeline
from pollcat.state import StateStore
from pollcat.states import OutcomeKind, Verdict
from tests.conftest import scenario
from tests.pollcat.test_ledger_sql import pg_server  # noqa: F401  (fixture)
from tests.support import (
    crc_hex,
    delivered_files,
    downloads,
    login,
    pipeline_for,
    statuses,
    wait_status,
)

ALICE = {"user": "simple/alice", "transport": "globus", "file_name": "alice_run42",
         "email": "alice@example.org", "items": [{"investigation": "INV-001", "dataset": "run-42"}]}


def _calls(sim, endpoint: str) -> int:
    return sum(1 for e in sim.facility.faults.log if e.get("endpoint") == endpoint)


def _count_calls(sim, endpoint: str) -> None:
    """A zero-second latency fault on every call: the fault log then counts the calls."""
    sim.add_fault(kind="latency", service="ids", endpoint=endpoint, seconds=0)


def _ledger(tmp_path) -> StateStore:
    return StateStore(tmp_path / "state", "LILS")


def _set_status(url: str, download_id: int, status: str) -> None:
    r = requests.put(f"{url}/topcat/admin/download/{download_id}/status", data={
        "facilityName": "LILS", "sessionId": login(url), "value": status}, timeout=10)
    r.raise_for_status()


def test_one_deadline_for_the_whole_sweep(make_sim, tmp_path):
    """1,000 pending downloads used to cost 1,000 budgets; now a sweep lasts one budget."""
    many = [dict(ALICE, file_name=f"alice_{i}") for i in range(6)]
    sim = make_sim(scenario(downloads=many, restore={"latency_s": 600,
                                                    "bytes_per_s": 1_000_000_000}))
    wait_status(sim.url, "RESTORING")
    _count_calls(sim, "isPrepared")
    pipe = pipeline_for(sim, tmp_path)
    t0 = time.monotonic()
    outcomes = pipe.sweep(budget_s=1.5)
    elapsed = time.monotonic() - t0
    assert [o.outcome for o in outcomes] == [OutcomeKind.WAITING] * 6
    assert elapsed < 1.5 + 5.0, f"a sweep of 6 pending downloads took {elapsed:.1f} s"
    checks = _calls(sim, "isPrepared")
    # every download checked at least twice (first round + a re-check) within the budget, and
    # each check is one isPrepared: never two per check
    assert 12 <= checks <= 6 * 8, checks


def test_ready_downloads_are_delivered_while_others_wait(make_sim, tmp_path):
    """A ready download does not wait for the slowest one's poll budget."""
    bob = {"user": "simple/bob", "transport": "globus", "file_name": "bob_all",
           "items": [{"investigation": "INV-002"}]}
    sim = make_sim(scenario(downloads=[ALICE, bob]))
    wait_status(sim.url, "RESTORING")
    alice_id, bob_id = sorted(statuses(sim.url))
    sim.add_fault(kind="error", service="ids", endpoint="isPrepared", status=500,
                  params={"preparedId": downloads(sim.url)[bob_id]["preparedId"]},
                  message="slow tape")
    pipe = pipeline_for(sim, tmp_path)
    t0 = time.monotonic()
    out = {o.download_id: o for o in pipe.sweep(budget_s=3)}
    assert out[alice_id].outcome == OutcomeKind.COMPLETED
    assert out[alice_id].seconds < 3, "alice's delivery waited for bob's poll budget"
    assert out[bob_id].outcome == OutcomeKind.RETRY and "slow tape" in out[bob_id].reason
    assert time.monotonic() - t0 < 10


def test_refused_admin_access_stops_the_sweep_and_expires_nothing(make_sim, tmp_path):
    """Two 403s on an admin call used to expire the user's download."""
    sim = make_sim(scenario(downloads=[ALICE]))
    wait_status(sim.url, "RESTORING")
    sim.add_fault(kind="error", service="topcat", endpoint="admin/download/*/status",
                  method="PUT", status=403, code="ForbiddenException",
                  message="please provide a valid facilityName and sessionId")
    pipe = pipeline_for(sim, tmp_path)
    with pytest.raises(ConfigurationError, match="refused admin access"):
        pipe.sweep()
    assert statuses(sim.url) == {1: "RESTORING"}
    assert _ledger(tmp_path).get(1).verdict != Verdict.EXPIRED
    sim.facility.faults.clear()
    (out,) = pipe.sweep()  # access restored: completed without copying again
    assert out.outcome == OutcomeKind.COMPLETED and out.bytes == 0
    assert statuses(sim.url) == {1: "COMPLETE"}


def test_session_expiring_mid_transfer_logs_in_again_and_continues(make_sim, tmp_path):
    """The IDS answers 403 to a getData with an expired session: log in and go on."""
    sim = make_sim(scenario(downloads=[ALICE]))
    wait_status(sim.url, "RESTORING")
    pipe = pipeline_for(sim, tmp_path, concurrency=1)
    old = pipe.clients.icat.session_id()
    sim.add_fault(kind="expire_sessions", user="simple/pollcat")
    sim.add_fault(kind="error", service="ids", endpoint="getData", status=403, count=1,
                  code="InsufficientPrivilegesException",
                  message=f"Session id {old} has expired")
    (out,) = pipe.sweep()
    assert out.outcome == OutcomeKind.COMPLETED, out
    assert pipe.clients.icat.session_id() != old
    assert statuses(sim.url) == {1: "COMPLETE"}
    root = tmp_path / "target/globus"
    for rel, path in delivered_files(root).items():
        df = next(d for d in sim.store.datafiles.values() if rel.endswith(d.name))
        assert path.stat().st_size == df.size and crc_hex(path) == df.checksum
    assert old not in repr(_ledger(tmp_path).get(1)) and old not in out.reason


def test_ids_refusing_the_account_stops_the_sweep(make_sim, tmp_path):
    sim = make_sim(scenario(downloads=[ALICE]))
    wait_status(sim.url, "RESTORING")
    sim.add_fault(kind="error", service="ids", endpoint="getData", status=403,
                  code="InsufficientPrivilegesException", message="no read access")
    pipe = pipeline_for(sim, tmp_path)
    with pytest.raises(AccountRefused, match="no read access"):
        pipe.sweep()
    assert statuses(sim.url) == {1: "RESTORING"}
    assert _ledger(tmp_path).get(1).verdict is None


def test_wrong_password_is_a_configuration_error(make_sim, tmp_path):
    sim = make_sim(scenario(downloads=[ALICE]))
    wait_status(sim.url, "RESTORING")
    cfg = PipelineConfig(
        facility=FacilityConfig(facility_name="LILS", icat_url=sim.url, ids_url=sim.url,
                                topcat_url=sim.url, username="pollcat", password="wrong"),
        routes={"globus": TargetConfig(url=f"file://{tmp_path / 'out'}")},
        state_dir=tmp_path / "state")
    pipe = Pipeline(cfg)
    with pytest.raises(ConfigurationError, match="refused the functional account"):
        pipe.sweep()
    assert statuses(sim.url) == {1: "RESTORING"}
    assert not list((tmp_path / "state/LILS/ledger").glob("*.json"))


def test_the_same_mismatch_again_and_again_is_permanent(make_sim, tmp_path):
    """An IDS that serves other bytes than ICAT describes is not refetched for 72 hours."""
    sim = make_sim(scenario(downloads=[ALICE]))
    wait_status(sim.url, "RESTORING")
    sim.add_fault(kind="corrupt", service="ids", endpoint="getData", after_bytes=3)
    pipe = pipeline_for(sim, tmp_path)
    kinds = []
    for _ in range(pipe.cfg.max_identical_mismatches):
        (out,) = pipe.sweep()
        kinds.append(out.outcome)
    assert kinds == [OutcomeKind.RETRY] * (pipe.cfg.max_identical_mismatches - 1) + [
        OutcomeKind.EXPIRED]
    assert "do not match ICAT" in out.reason
    assert statuses(sim.url) == {1: "EXPIRED"}
    assert not delivered_files(tmp_path / "target/globus")


def test_unexpected_errors_fall_under_the_deadline(make_sim, tmp_path, monkeypatch):
    sim = make_sim(scenario(downloads=[ALICE]))
    wait_status(sim.url, "RESTORING")
    pipe = pipeline_for(sim, tmp_path)
    import pollcat.delivery

    def broken(*a, **k):
        raise KeyError("a bug")

    monkeypatch.setattr(pollcat.delivery.catalog, "datafiles", broken)
    (first,) = pipe.sweep()
    assert first.outcome == OutcomeKind.RETRY and "KeyError" in first.reason
    _ledger(tmp_path).update(1, first_seen="2000-01-01T00:00:00+00:00")
    (second,) = pipe.sweep()
    assert second.outcome == OutcomeKind.EXPIRED and "still failing" in second.reason


def test_resuming_an_expired_download_in_topcat_is_a_fresh_attempt(make_sim, tmp_path):
    sim = make_sim(scenario(downloads=[ALICE]))
    wait_status(sim.url, "RESTORING")
    sim.add_fault(kind="error", service="ids", endpoint="getData", status=500,
                  message="disk controller on fire")
    pipe = pipeline_for(sim, tmp_path)
    pipe.sweep()
    _ledger(tmp_path).update(1, first_seen="2000-01-01T00:00:00+00:00")
    (expired,) = pipe.sweep()
    assert expired.outcome == OutcomeKind.EXPIRED and statuses(sim.url) == {1: "EXPIRED"}
    assert pipe.sweep() == []  # EXPIRED downloads are not discovered
    sim.facility.faults.clear()
    _set_status(sim.url, 1, "RESTORING")  # the admin fixed the disk and resumed it
    (out,) = pipe.sweep()
    assert out.outcome == OutcomeKind.COMPLETED, out
    assert statuses(sim.url) == {1: "COMPLETE"}
    rec = _ledger(tmp_path).get(1)
    assert rec.verdict == Verdict.COMPLETED and rec.first_seen > "2001"


def test_data_not_online_is_waiting_not_a_reopen_loop(make_sim, tmp_path):
    """A 503 from getData used to be reopened at once, 12 calls in 0.6 s."""
    sim = make_sim(scenario(downloads=[ALICE]))
    wait_status(sim.url, "RESTORING")
    sim.add_fault(kind="error", service="ids", endpoint="getData", status=503,
                  code="DataNotOnlineException", message="data not online")
    pipe = pipeline_for(sim, tmp_path)
    (out,) = pipe.sweep()
    assert out.outcome == OutcomeKind.WAITING
    assert _calls(sim, "getData") <= 2  # at most one per file, no reopening
    assert statuses(sim.url) == {1: "RESTORING"}


def test_the_ledger_holds_no_prepared_id(make_sim, tmp_path):
    sim = make_sim(scenario(downloads=[ALICE]))
    wait_status(sim.url, "RESTORING")
    old = downloads(sim.url)[1]["preparedId"]
    sim.add_fault(kind="forget_prepared", prepared_id=old)
    pipe = pipeline_for(sim, tmp_path)
    pipe.sweep()
    pipe.sweep()
    assert statuses(sim.url) == {1: "COMPLETE"}
    text = "".join(p.read_text() for p in (tmp_path / "state/LILS/ledger").glob("*"))
    assert old not in text and downloads(sim.url)[1]["preparedId"] not in text
    secrets = tmp_path / "state/LILS/secrets"
    assert secrets.stat().st_mode & 0o077 == 0


def test_a_restore_that_never_finishes_ends_at_the_waiting_deadline(make_sim, tmp_path):
    sim = make_sim(scenario(downloads=[ALICE], restore={"latency_s": 600,
                                                       "bytes_per_s": 1_000_000_000}))
    wait_status(sim.url, "RESTORING")
    pipe = pipeline_for(sim, tmp_path)
    (first,) = pipe.sweep(budget_s=0.2)
    assert first.outcome == OutcomeKind.WAITING
    _ledger(tmp_path).update(1, first_seen="2000-01-01T00:00:00+00:00")
    (late,) = pipe.sweep(budget_s=0.2)
    assert late.outcome == OutcomeKind.EXPIRED and "did not have the data online" in late.reason
    assert statuses(sim.url) == {1: "EXPIRED"}


def test_a_prepare_that_times_out_is_not_an_attempt(make_sim, tmp_path):
    """TopCAT's admin prepare of a large selection can outlive the HTTP timeout."""
    sim = make_sim(scenario(downloads=[ALICE]))
    wait_status(sim.url, "RESTORING")
    sim.add_fault(kind="forget_prepared")
    sim.add_fault(kind="error", service="topcat", endpoint="admin/download/*/prepare",
                  status=504, count=1, message="gateway timeout")
    pipe = pipeline_for(sim, tmp_path)
    (first,) = pipe.sweep()
    assert first.outcome == OutcomeKind.RETRY and "gateway timeout" in first.reason
    assert _ledger(tmp_path).get(1).prepare_attempts == 0
    for _ in range(3):
        if pipe.sweep()[0].outcome == OutcomeKind.COMPLETED:
            break
    assert statuses(sim.url) == {1: "COMPLETE"}
    assert _ledger(tmp_path).get(1).prepare_attempts == 1


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_the_pipeline_on_a_shared_sql_ledger(make_sim, tmp_path, db, request):
    """Two workers with separate state dirs but one database ledger: the download is delivered
    once, the second worker finds it completed, and the ledger holds no preparedId."""
    from pydantic import SecretStr

    from pollcat.ledger_sql import sqlite_url

    if db == "sqlite":
        url = sqlite_url(tmp_path / "ledger.db")
    else:
        postgres = request.getfixturevalue("pg_server")
        url = postgres.create_database()
    sim = make_sim(scenario(downloads=[ALICE]))
    wait_status(sim.url, "RESTORING")
    workers = []
    for n in "AB":
        base = pipeline_for(sim, tmp_path, state_dir=tmp_path / f"state-{n}")
        workers.append(Pipeline(base.cfg.model_copy(update={"ledger_url": SecretStr(url)})))
    (first,) = workers[0].sweep()
    assert first.outcome == OutcomeKind.COMPLETED
    assert workers[1].sweep() == []  # TopCAT says COMPLETE: nothing to discover
    rec = workers[1].state.get(1)
    assert rec.verdict == Verdict.COMPLETED and rec.files == 2
    assert not list((tmp_path / "state-A" / "LILS").glob("ledger/*.json"))
