"""The simulated IDS counts concurrent getData bodies (now, peak, total): what the scale-out
test asserts pollcat's per-IDS limit against. Driven with python-icat's IDSClient and raw HTTP,
so the count is of what the server streamed, not of what pollcat believes it opened."""

from __future__ import annotations

import time

import httpx
import pytest
from icat.ids import DataSelection, IDSClient

from tests.conftest import scenario

pytestmark = pytest.mark.timeout(60)


BIG = 64 * 1024 * 1024  # more than the socket buffers hold: an unread body stays open


@pytest.fixture
def sim(make_sim):
    inv = {"name": "INV-001", "visit_id": "1", "users": ["simple/alice"],
           "datasets": [{"name": "big", "datafiles": [{"name": "big.nxs", "size": BIG}]}]}
    return make_sim(scenario(storage="single-level", materialize_online=False,
                             investigations=[inv]))


def _scan(sim):
    return next(d for d in sim.store.datafiles.values() if d.name == "big.nxs")


def _streams(sim) -> dict[str, int]:
    return httpx.get(f"{sim.url}/sim/ids-streams", timeout=10).json()


def test_open_bodies_are_counted_until_read_or_closed(sim):
    sid = sim.facility.sessions.login("simple/alice")
    scan = _scan(sim)
    url = f"{sim.url}/ids/getData"
    params = {"sessionId": sid, "datafileIds": str(scan.id)}
    assert _streams(sim) == {"active": 0, "peak": 0, "total": 0, "resumed": [],
                             "datafiles": []}
    with httpx.Client(timeout=10) as http:
        opened = []
        for _ in range(3):  # three bodies open at once, each read one chunk only
            resp = http.send(http.build_request("GET", url, params=params), stream=True)
            assert resp.status_code == 200
            chunks = resp.iter_raw(1024)  # kept: a dropped iterator closes the response
            next(chunks)
            opened.append((resp, chunks))
        _wait_until(lambda: sim.facility.ids_streams.snapshot()["active"] == 3, 3)
        for resp, _ in opened:
            resp.close()
    # a client that went away releases its count once the server notices
    _wait_until(lambda: _streams(sim)["active"] == 0)
    assert _streams(sim) == {"active": 0, "peak": 3, "total": 3, "resumed": [],
                             "datafiles": [scan.id] * 3}

    # a body read to the end is counted once and leaves no active stream; the peak stays
    client = IDSClient(sim.url + "/ids", sessionId=sid)
    body = client.getData(DataSelection({"datafileIds": [scan.id]})).read()
    assert len(body) == scan.size
    _wait_until(lambda: _streams(sim)["active"] == 0)
    assert _streams(sim) == {"active": 0, "peak": 3, "total": 4, "resumed": [],
                             "datafiles": [scan.id] * 4}

    # a body resumed with Range is recorded with its offset (a continued part file)
    resumed = client.getData(DataSelection({"datafileIds": [scan.id]}), offset=BIG - 1000)
    assert len(resumed.read()) == 1000
    _wait_until(lambda: _streams(sim)["active"] == 0)
    assert _streams(sim) == {"active": 0, "peak": 3, "total": 5, "resumed": [BIG - 1000],
                             "datafiles": [scan.id] * 5}

    # DELETE forgets peak, total and offsets (between phases of a test)
    assert httpx.delete(f"{sim.url}/sim/ids-streams", timeout=10).json() == {
        "active": 0, "peak": 0, "total": 0, "resumed": [], "datafiles": []}


def test_errors_before_the_body_are_not_streams(sim):
    sid = sim.facility.sessions.login("simple/alice")
    r = httpx.get(f"{sim.url}/ids/getData", params={"sessionId": sid, "datafileIds": "999999"},
                  timeout=10)
    assert r.status_code == 404
    assert _streams(sim)["total"] == 0


def _wait_until(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_pollcat_slots_bound_the_streams_the_ids_sees(make_sim, tmp_path):
    """pollcat's transfer slots (what Prefect's global limits back in a flow) hold the getData
    streams at the IDS to the limit, with several downloads and files in flight at once; and
    each file written takes a slot of its target's limit. In-process, no Prefect: a semaphore
    per limit name stands in for the server."""
    import threading
    from collections import Counter
    from contextlib import contextmanager

    from pollcat.sources import SLOTS, ids_limit_name, target_limit_name
    from tests.support import pipeline_for, statuses, sweep_until_complete

    datasets = [{"name": f"ds-{i}", "datafiles": [{"name": f"f{i}_{k}.dat", "size": 3_000_000}
                                                 for k in range(3)]} for i in range(4)]
    inv = {"name": "INV-001", "visit_id": "1", "users": ["simple/alice"], "datasets": datasets}
    sim = make_sim(scenario(
        storage="single-level", investigations=[inv],
        downloads=[{"user": "simple/alice", "transport": "globus", "file_name": f"d{i}",
                    "items": [{"investigation": "INV-001", "dataset": f"ds-{i}"}]}
                   for i in range(4)],
        # every body pauses after its first 100 kB: without the limit they would overlap
        faults=[{"kind": "stall", "service": "ids", "endpoint": "getData",
                 "after_bytes": 100_000, "seconds": 0.3}]))
    ids_name, target_name = ids_limit_name(sim.url), target_limit_name("LILS", "globus")
    limits = {ids_name: threading.BoundedSemaphore(2)}
    taken: Counter[str] = Counter()

    @contextmanager
    def slot(name: str):
        taken[name] += 1
        sem = limits.get(name)
        if sem is None:
            yield
            return
        with sem:
            yield

    token = SLOTS.set(slot)
    try:
        pipe = pipeline_for(sim, tmp_path, concurrency=3)
        sweep_until_complete(pipe, sim.url)
    finally:
        SLOTS.reset(token)
    assert set(statuses(sim.url).values()) == {"COMPLETE"}
    streams = sim.facility.ids_streams.snapshot()
    assert streams["total"] == 12 and streams["peak"] == 2, streams
    assert taken == {ids_name: 12, target_name: 12}
