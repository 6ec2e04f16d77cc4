"""Discovery keeps a bound: history does not slow a sweep (issue 8).

TopCAT's download table has no index but its primary key, and most downloads in it were settled
long ago. `Pipeline.discover` asks for ids above a bound kept in the ledger, moves it only over
downloads settled for good (or PAUSED) and older than TopCAT's commit skew, and every
`full_scan_minutes` asks for every RESTORING download to see an admin's resume below it. The
unit tests drive it with a recorded TopCAT; the end-to-end tests run it against the simulated
facility's real queries.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from pollcat.pipeline import Pipeline
from pollcat.states import DownloadStatus, Verdict
from pollcat.topcat import ENUM, Download
from tests.conftest import scenario
from tests.support import pipeline_config, pipeline_for, statuses

NOW = datetime.now(UTC)
OLD = NOW - timedelta(hours=1)
BOUND = "transport:globus"


def fresh() -> datetime:
    """Now, as the test runs: a row created "now" must be younger than the commit skew then,
    and under xdist a test may run minutes after its module was imported (and NOW was taken)."""
    return datetime.now(UTC)


class RecordedTopcat:
    """TopCAT's admin query, answering from a list and remembering each question: (status or
    "any", after_id)."""

    def __init__(self, rows: list[Download]):
        self.rows = rows
        self.asked: list[tuple[str, int | None]] = []

    def pending(self, transport, status, *, page_size=100, after_id=None):
        self.asked.append((str(status), after_id))
        return [d for d in self._above(after_id) if d.status == status]

    def downloads(self, transport, *, page_size=100, after_id=None):
        self.asked.append(("any", after_id))
        return self._above(after_id)

    def _above(self, after_id):
        return [d for d in sorted(self.rows, key=lambda d: d.id)
                if after_id is None or d.id > after_id]


def _row(i: int, created: datetime = OLD, *, two_level: bool = False,
         status: str = DownloadStatus.COMPLETE) -> Download:
    return Download(id=i, facility_name="LILS", user_name="simple/alice", transport="globus",
                    file_name=f"d{i}", status=status, is_two_level=two_level, created_at=created)


def _pipeline(tmp_path, rows: list[Download]) -> tuple[Pipeline, RecordedTopcat]:
    topcat = RecordedTopcat(rows)
    pipe = Pipeline(pipeline_config(tmp_path), clients=SimpleNamespace(topcat=topcat))
    pipe.state.first_run = NOW - timedelta(days=1)  # every row is pollcat's to deliver
    return pipe, topcat


def _completed(pipe: Pipeline, *ids: int) -> None:
    for i in ids:
        pipe.state.update(i, verdict=Verdict.COMPLETED)


def _bounds(topcat: RecordedTopcat) -> list[int | None]:
    return [after for status, after in topcat.asked if status == "any"]


def _later(monkeypatch, minutes: float) -> None:
    """Discovery's clock (the full-scan mark), `minutes` on from now."""
    import pollcat.pipeline
    at = time.time() + minutes * 60
    monkeypatch.setattr(pollcat.pipeline.time, "time", lambda: at)


def test_the_bound_stops_at_the_first_download_that_still_needs_work(tmp_path):
    rows = [_row(1), _row(2), _row(3, two_level=True), _row(4), _row(5), _row(6, fresh())]
    pipe, topcat = _pipeline(tmp_path, rows)
    _completed(pipe, 1, 2, 5)
    assert [d.id for d in pipe.discover()] == [4, 6]
    assert pipe.state.scan_bound(BOUND) == 3  # 3 is two-level: not pollcat's

    _completed(pipe, 4)
    assert [d.id for d in pipe.discover()] == [6]
    assert pipe.state.scan_bound(BOUND) == 5
    assert _bounds(topcat) == [None, 3]


def test_a_fresh_download_holds_the_bound_back_for_the_commit_skew(tmp_path):
    """TopCAT's ids come from a sequence: id 8 committed, id 7 still in its transaction."""
    rows = [_row(6), _row(8, fresh())]
    pipe, topcat = _pipeline(tmp_path, rows)
    _completed(pipe, 6, 8)  # 8 delivered at once, minutes after it was created
    assert pipe.discover() == []
    assert pipe.state.scan_bound(BOUND) == 6  # not 8: 7 may still appear
    rows.append(_row(7, fresh()))  # ... and it does
    assert [d.id for d in pipe.discover()] == [7]
    _completed(pipe, 7)
    rows[:] = [dataclasses.replace(d, created_at=OLD) for d in rows]  # minutes later
    assert pipe.discover() == []
    assert pipe.state.scan_bound(BOUND) == 8
    assert _bounds(topcat) == [None, 6, 6]


def test_old_history_is_passed_once_and_a_resume_below_the_bound_waits_for_the_full_scan(
        tmp_path, monkeypatch):
    history = [_row(i, NOW - timedelta(days=30)) for i in range(1, 501)]  # older than pollcat
    expired = _row(501, OLD, status=DownloadStatus.EXPIRED, two_level=True)
    paused = _row(502, OLD, status=DownloadStatus.PAUSED, two_level=True)
    rows = [*history, expired, paused]
    pipe, topcat = _pipeline(tmp_path, rows)
    pipe.state.first_run = NOW - timedelta(days=2)
    assert pipe.discover() == []
    assert pipe.state.scan_bound(BOUND) == 502  # past the EXPIRED and the PAUSED one

    rows[-2:] = [dataclasses.replace(d, status=DownloadStatus.RESTORING) for d in (expired, paused)]
    assert pipe.discover() == []  # an admin's retry and resume below the bound: not yet seen
    assert topcat.asked[-1] == ("any", 502)

    _later(monkeypatch, 9)
    assert pipe.discover() == []
    _later(monkeypatch, 11)  # full_scan_minutes (10) after the first sweep
    assert [d.id for d in pipe.discover()] == [501, 502]
    assert topcat.asked[-2:] == [("any", 502), (DownloadStatus.RESTORING, None)]
    assert [d.id for d in pipe.discover()] == []  # the next full scan is 10 minutes away
    assert len([a for a in topcat.asked if a[0] != "any"]) == 1


def test_a_full_scan_that_failed_is_asked_again_next_sweep(tmp_path, monkeypatch):
    rows = [_row(1), _row(2, status=DownloadStatus.EXPIRED, two_level=True)]
    pipe, topcat = _pipeline(tmp_path, rows)
    _completed(pipe, 1)
    assert pipe.discover() == []
    rows[1] = dataclasses.replace(rows[1], status=DownloadStatus.RESTORING)  # retried
    _later(monkeypatch, 11)
    real = topcat.pending
    topcat.pending = lambda *a, **kw: (_ for _ in ()).throw(ConnectionError("TopCAT down"))
    with pytest.raises(ConnectionError):
        pipe.discover()
    topcat.pending = real
    assert [d.id for d in pipe.discover()] == [2]  # not 10 minutes later


def test_a_restoring_download_holds_the_bound_until_it_is_settled(tmp_path):
    restoring = _row(2, OLD, status=DownloadStatus.RESTORING, two_level=True)
    rows = [_row(1, OLD, two_level=True), restoring, _row(3, OLD, two_level=True),
            _row(4, OLD, status=DownloadStatus.PREPARING, two_level=True)]
    pipe, topcat = _pipeline(tmp_path, rows)
    assert [d.id for d in pipe.discover()] == [2]
    assert pipe.state.scan_bound(BOUND) == 1
    assert [d.id for d in pipe.discover()] == [2]
    rows[1] = dataclasses.replace(restoring, status=DownloadStatus.COMPLETE)  # pollcat set it
    assert pipe.discover() == []
    assert pipe.state.scan_bound(BOUND) == 3  # TopCAT still preparing 4: it is next
    assert _bounds(topcat) == [None, 1, 1]


@pytest.fixture
def aged(make_sim):
    """The simulated facility, and a way to make its downloads older than the commit skew."""
    sim = make_sim(scenario(storage="single-level", downloads=[
        {"user": "simple/alice", "transport": "globus", "file_name": f"alice_{n}",
         "email": "alice@example.org", "items": [{"investigation": "INV-001",
                                                   "dataset": "run-42"}]}
        for n in range(3)]))

    def age(minutes: float = 10) -> None:
        with sim.facility.topcat.lock:
            for d in sim.facility.topcat.downloads.values():
                d.created_at = d.created_at - timedelta(minutes=minutes)
    return sim, age


def test_a_sweep_after_delivering_asks_topcat_for_new_downloads_only(aged, tmp_path):
    sim, age = aged
    pipe = pipeline_for(sim, tmp_path)
    assert [o.outcome for o in pipe.sweep()] == ["completed"] * 3
    age()
    assert pipe.sweep() == []
    bound = max(statuses(sim.url))
    assert pipe.state.scan_bound(BOUND) == bound

    asked: list[int | None] = []
    real = pipe.topcat.query

    def spy(where, **kw):
        asked.append(kw.get("after_id"))
        return real(where, **kw)
    pipe.clients.topcat.query = spy
    assert pipe.sweep() == []
    assert asked == [bound]  # no unbounded question: the full scan is 10 minutes away


def test_an_admin_resume_below_the_bound_is_found_by_the_full_scan(aged, tmp_path, monkeypatch):
    sim, age = aged
    pipe = pipeline_for(sim, tmp_path)
    assert [o.outcome for o in pipe.sweep()] == ["completed"] * 3
    age()
    assert pipe.discover() == []
    first = min(statuses(sim.url))
    assert pipe.state.scan_bound(BOUND) > first
    pipe.topcat.set_status(first, DownloadStatus.RESTORING)  # an admin asks for it again
    assert pipe.discover() == []
    _later(monkeypatch, 11)
    assert [d.id for d in pipe.discover()] == [first]


def test_a_download_leaving_the_result_mid_paging_hides_no_other(make_sim, tmp_path):
    """Pages continue after the last id, not at an offset: with offsets, completing download 1
    between two pages shifted every row and skipped download 3 until the next sweep."""
    sim = make_sim(scenario(downloads=[
        {"user": "simple/alice", "transport": "globus", "file_name": f"alice_{n}",
         "email": "alice@example.org", "items": [{"investigation": "INV-001",
                                                   "dataset": "run-42"}]}
        for n in range(5)]))
    pipe = pipeline_for(sim, tmp_path)
    ids = sorted(statuses(sim.url))
    for i in ids:
        pipe.topcat.set_status(i, DownloadStatus.RESTORING)
    seen = []
    for d in pipe.topcat.query(f"download.status = {ENUM}.RESTORING", page_size=2):
        seen.append(d.id)
        if len(seen) == 2:  # another worker completes the first download meanwhile
            pipe.topcat.set_status(ids[0], DownloadStatus.COMPLETE)
    assert seen == ids


def test_threads_of_one_process_raise_a_bound_without_colliding(tmp_path):
    """Regression: the temporary file was named after the process only, so two sweeps of one
    process (threads) raising the same bound wrote one temporary file, and the second rename
    failed with FileNotFoundError (seen in test_overlapping_sweeps_deliver_once)."""
    import threading

    from pollcat.state import StateStore

    store = StateStore(tmp_path, "LILS")
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def raise_many(offset: int) -> None:
        start.wait()
        try:
            for i in range(300):
                store.raise_scan_bound("full-scan:globus", i * 4 + offset)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=raise_many, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # any written bound is valid (docstring); each thread's last write is its highest
    assert 299 * 4 <= store.scan_bound("full-scan:globus") <= 299 * 4 + 3
    assert [p.name for p in (tmp_path / "LILS" / "scan-bounds").iterdir()
            if p.name.endswith(".tmp")] == []
