"""Single-level discovery keeps a bound: history does not slow a sweep (issue 8).

TopCAT only has COMPLETE downloads to offer on a single-level IDS, and most of them were settled
long ago. `Pipeline.discover` asks for ids above a bound kept in the ledger and moves it only
over downloads settled for good and older than TopCAT's commit skew. The unit tests drive it with
a recorded TopCAT; the end-to-end test runs it against the simulated facility's real queries.
"""

from __future__ import annotations

import dataclasses
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


class RecordedTopcat:
    """TopCAT's admin query, answering from a list and remembering each `after_id` asked."""

    def __init__(self, rows: list[Download]):
        self.rows = rows
        self.asked: list[tuple[str, int | None]] = []

    def pending(self, transport, status, *, page_size=100, after_id=None):
        self.asked.append((str(status), after_id))
        return [d for d in sorted(self.rows, key=lambda d: d.id)
                if d.status == status and (after_id is None or d.id > after_id)]


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


def _complete_bounds(topcat: RecordedTopcat) -> list[int | None]:
    return [after for status, after in topcat.asked if status == DownloadStatus.COMPLETE]


def test_the_bound_stops_at_the_first_download_that_still_needs_work(tmp_path):
    rows = [_row(1), _row(2), _row(3, two_level=True), _row(4), _row(5), _row(6, NOW)]
    pipe, topcat = _pipeline(tmp_path, rows)
    _completed(pipe, 1, 2, 5)
    assert [d.id for d in pipe.discover()] == [4, 6]
    assert pipe.state.scan_bound("complete:globus") == 3  # 3 is two-level: not pollcat's

    _completed(pipe, 4)
    assert [d.id for d in pipe.discover()] == [6]
    assert pipe.state.scan_bound("complete:globus") == 5
    assert _complete_bounds(topcat) == [None, 3]


def test_a_fresh_download_holds_the_bound_back_for_the_commit_skew(tmp_path):
    """TopCAT's ids come from a sequence: id 8 committed, id 7 still in its transaction."""
    rows = [_row(6), _row(8, NOW)]
    pipe, topcat = _pipeline(tmp_path, rows)
    _completed(pipe, 6, 8)  # 8 delivered at once, minutes after it was created
    assert pipe.discover() == []
    assert pipe.state.scan_bound("complete:globus") == 6  # not 8: 7 may still appear
    rows.append(_row(7, NOW))  # ... and it does
    assert [d.id for d in pipe.discover()] == [7]
    _completed(pipe, 7)
    rows[:] = [dataclasses.replace(d, created_at=OLD) for d in rows]  # minutes later
    assert pipe.discover() == []
    assert pipe.state.scan_bound("complete:globus") == 8
    assert _complete_bounds(topcat) == [None, 6, 6]


def test_old_history_is_settled_and_restoring_downloads_are_asked_without_a_bound(tmp_path):
    history = [_row(i, NOW - timedelta(days=30)) for i in range(1, 501)]  # older than pollcat
    resumed = _row(7, NOW - timedelta(days=30), status=DownloadStatus.RESTORING, two_level=True)
    pipe, topcat = _pipeline(tmp_path, [*history, resumed])
    pipe.state.first_run = NOW - timedelta(days=2)
    assert [d.id for d in pipe.discover()] == [7]
    assert pipe.state.scan_bound("complete:globus") == 500
    assert [d.id for d in pipe.discover()] == [7]  # an admin's resume: no bound on RESTORING
    assert topcat.asked[-2:] == [(DownloadStatus.RESTORING, None), (DownloadStatus.COMPLETE, 500)]


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
    assert pipe.state.scan_bound("complete:globus") == bound

    asked: list[int | None] = []
    real = pipe.topcat.pending

    def spy(transport, status, **kw):
        asked.append(kw.get("after_id"))
        rows = real(transport, status, **kw)
        if status == DownloadStatus.COMPLETE:
            assert all(d.id > bound for d in rows)
        return rows
    pipe.clients.topcat.pending = spy
    assert pipe.sweep() == []
    assert asked == [None, bound]


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
