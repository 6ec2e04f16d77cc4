"""Limits and latency of real deployments: the front end's request-line limit, ICAT's
maxEntities, and prepare calls whose time grows with the selection (sim-fidelity rows 7, 8)."""

from __future__ import annotations

import time

import pytest
import requests

from simfacility.limits import request_line_length
from tests.conftest import scenario
from tests.sim.test_topcat import ALICE_INV, login, wait_status


def many_files(n: int) -> list[dict]:
    return [{"name": "big", "datafiles": [{"generate": n, "size": 10}]}]


def lookup(sim, sid: str, ids: list[int]) -> requests.Response:
    query = (f"SELECT df FROM Datafile df WHERE df.id IN ({', '.join(map(str, ids))}) "
             "INCLUDE df.dataset.investigation.facility")
    return requests.get(f"{sim.url}/icat/entityManager", timeout=30,
                        params={"sessionId": sid, "query": query})


@pytest.fixture
def big(make_sim):
    return make_sim(scenario(icat={"max_entities": 1000},
                             investigations=[{"name": "INV-B", "users": ["simple/alice"],
                                              "datasets": many_files(600)}]))


def test_request_line_over_8190_bytes_is_refused_by_the_front_end(big):
    sid = login(big, "pollcat", "pollpass")
    ids = sorted(big.store.datafiles)[:200]
    ok = lookup(big, sid, ids)
    assert ok.status_code == 200
    padded = [i + 10**11 for i in ids] * 6  # same count of ids, each 12 digits: over 8 KiB
    r = lookup(big, sid, padded)
    assert r.status_code == 414 and "Request-URI Too Long" in r.text
    assert r.headers["content-type"].startswith("text/html")  # not a service's JSON
    # the IDS and TopCAT sit behind the same front end
    long_ids = ",".join(str(10**11 + i) for i in range(800))
    r = requests.get(f"{big.url}/ids/getSize", timeout=10,
                     params={"sessionId": sid, "datafileIds": long_ids})
    assert r.status_code == 414
    assert requests.get(f"{big.url}/sim/health", timeout=10,
                        params={"pad": "x" * 9000}).status_code == 200


def test_request_line_limit_is_configurable(make_sim):
    sim = make_sim(scenario(http={"max_request_line": 100}))
    assert requests.get(f"{sim.url}/icat/version", timeout=10).status_code == 200
    r = requests.get(f"{sim.url}/icat/version", params={"x": "y" * 100}, timeout=10)
    assert r.status_code == 414
    off = make_sim(scenario(http={"max_request_line": None}))
    r = requests.get(f"{off.url}/icat/version", params={"x": "y" * 20_000}, timeout=10)
    assert r.status_code == 200


def test_request_line_length_counts_what_the_client_sent():
    scope = {"method": "GET", "raw_path": b"/icat/entityManager", "query_string": b"a=%20",
             "http_version": "1.1"}
    assert request_line_length(scope) == len("GET /icat/entityManager?a=%20 HTTP/1.1")


def test_max_entities_is_published_and_counts_includes(big):
    sid = login(big, "pollcat", "pollpass")
    props = requests.get(f"{big.url}/icat/properties", timeout=10).json()
    assert props["maxEntities"] == 1000
    ids = sorted(df.id for df in big.store.datafiles.values() if df.name.startswith("file_"))
    assert lookup(big, sid, ids[:250]).status_code == 200  # 250 x 4 entities = 1000
    r = lookup(big, sid, ids[:251])
    assert r.status_code == 412 and r.json()["code"] == "VALIDATION"
    assert "more than 1000" in r.json()["message"]


def test_prepare_data_time_grows_with_the_selection(make_sim):
    sim = make_sim(scenario(ids={"icat_call_latency_s": 0.01},
                            investigations=[{"name": "INV-B", "users": ["simple/alice"],
                                             "datasets": many_files(100)}]))
    sid = login(sim, "alice", "alicepass")
    ids = sorted(df.id for df in sim.store.datafiles.values())

    def timed(n: int) -> float:
        start = time.monotonic()
        r = requests.post(f"{sim.url}/ids/prepareData", timeout=30,
                          data={"sessionId": sid, "datafileIds": ",".join(map(str, ids[:n]))})
        assert r.status_code == 200
        return time.monotonic() - start

    small, large = timed(2), timed(100)
    assert small < 0.5 and large >= 2 * 100 * 0.01  # two ICAT calls per datafile id


def test_admin_prepare_takes_the_ids_time_too(make_sim):
    sim = make_sim(scenario(
        ids={"icat_call_latency_s": 0.05}, topcat={"poll_interval_wait_s": 0.2},
        downloads=[{**ALICE_INV, "transport": "globus"}]))
    admin = login(sim, "pollcat", "pollpass")
    wait_status(sim, admin, 1, "RESTORING")
    start = time.monotonic()
    r = requests.put(f"{sim.url}/topcat/admin/download/1/prepare", timeout=30,
                     data={"facilityName": "LILS", "sessionId": admin})
    assert r.status_code == 200
    # INV-001 has two datasets: 1 + 2 ICAT calls in prepareData (size is already known)
    assert time.monotonic() - start >= 3 * 0.05


@pytest.mark.parametrize("ids_timeout_s,expected", [(None, 200), (0.5, 400)])
def test_topcat_waits_for_a_slow_ids_unless_given_a_timeout(make_sim, ids_timeout_s, expected):
    topcat = {"poll_interval_wait_s": 0.2}
    if ids_timeout_s is not None:
        topcat["ids_timeout_s"] = ids_timeout_s
    sim = make_sim(scenario(topcat=topcat, downloads=[{**ALICE_INV, "transport": "globus"}]))
    admin = login(sim, "pollcat", "pollpass")
    wait_status(sim, admin, 1, "RESTORING")
    sim.add_fault(kind="latency", service="ids", endpoint="prepareData", seconds=1.5, count=1)
    start = time.monotonic()
    r = requests.put(f"{sim.url}/topcat/admin/download/1/prepare", timeout=30,
                     data={"facilityName": "LILS", "sessionId": admin})
    assert r.status_code == expected, r.text
    if expected == 200:
        assert time.monotonic() - start >= 1.5  # late, not failed: production's default
