"""Fault injection through the sim-only HTTP endpoint `/sim/faults`, observed as a client would.

Every test drives the facility over HTTP: faults are POSTed as JSON, their effect is seen in
status codes, error JSON, timings and bytes, and `GET /sim/faults` shows what fired.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

import pytest
import requests

from tests.conftest import scenario

FAST = {"latency_s": 0.2, "bytes_per_s": 1_000_000_000}


# -- helpers ------------------------------------------------------------------------------------

def login(sim, user: str = "alice", password: str = "alicepass") -> str:
    creds = {"plugin": "simple", "credentials": [{"username": user}, {"password": password}]}
    r = requests.post(f"{sim.url}/icat/session", data={"json": json.dumps(creds)}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["sessionId"]


def add_faults(sim, spec: dict[str, Any] | list[dict[str, Any]]) -> Any:
    r = requests.post(f"{sim.url}/sim/faults", json=spec, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def faults_state(sim) -> dict[str, Any]:
    r = requests.get(f"{sim.url}/sim/faults", timeout=10)
    assert r.status_code == 200
    return r.json()


def datafile(sim, name: str):
    return next(df for df in sim.store.datafiles.values() if df.name == name)


def dataset_id(sim, name: str) -> int:
    return next(ds.id for ds in sim.store.datasets.values() if ds.name == name)


def expected_bytes(sim, name: str) -> bytes:
    return b"".join(sim.store.datafiles[datafile(sim, name).id].iter_bytes())


def get_data(sim, sid: str, name: str, **kwargs: Any) -> requests.Response:
    params = {"sessionId": sid, "datafileIds": datafile(sim, name).id}
    return requests.get(f"{sim.url}/ids/getData", params=params, timeout=30, **kwargs)


def poll_is_prepared(sim, prepared_id: str, timeout: float = 10.0) -> requests.Response:
    """isPrepared until it is an error or `true` (a restore takes ~0.2 s here)."""
    deadline = time.monotonic() + timeout
    while True:
        r = requests.get(f"{sim.url}/ids/isPrepared", params={"preparedId": prepared_id},
                         timeout=10)
        if r.status_code != 200 or r.text == "true":
            return r
        assert time.monotonic() < deadline, "isPrepared stayed false"
        time.sleep(0.05)


@pytest.fixture
def single(make_sim):
    """Single-level storage: every datafile is online at once."""
    return make_sim(scenario(storage="single-level"))


@pytest.fixture
def two_level(make_sim):
    return make_sim(scenario(restore=FAST))


# -- error: each service's own shape ------------------------------------------------------------

def test_error_fault_uses_each_services_error_shape(single):
    added = add_faults(single, [
        {"kind": "error", "service": "icat", "endpoint": "version", "status": 503,
         "code": "INTERNAL", "message": "icat is down"},
        {"kind": "error", "service": "ids", "endpoint": "ping", "status": 503},
        {"kind": "error", "service": "topcat", "endpoint": "version", "status": 401,
         "message": "go away"},
    ])
    assert [f["id"] for f in added] == [1, 2, 3]
    assert all(f["hits"] == 0 for f in added)

    r = requests.get(f"{single.url}/icat/version", timeout=10)
    assert r.status_code == 503
    assert r.json() == {"code": "INTERNAL", "message": "icat is down"}

    r = requests.get(f"{single.url}/ids/ping", timeout=10)
    assert r.status_code == 503
    assert r.json() == {"code": "DataNotOnlineException", "message": "Injected fault"}

    r = requests.get(f"{single.url}/topcat/version", timeout=10)
    assert r.status_code == 401
    assert r.json() == {"status": 401, "code": "AuthenticationException", "message": "go away"}

    # other endpoints of the same services are untouched
    assert requests.get(f"{single.url}/ids/version", timeout=10).status_code == 200
    assert requests.get(f"{single.url}/topcat/ping", timeout=10).json() == "ok"

    state = faults_state(single)
    assert [f["hits"] for f in state["faults"]] == [1, 1, 1]
    assert [(e["id"], e["service"], e["endpoint"], e["method"]) for e in state["log"]] == [
        (1, "icat", "version", "GET"), (2, "ids", "ping", "GET"), (3, "topcat", "version", "GET")]


def test_error_fault_default_codes(single):
    add_faults(single, [
        {"kind": "error", "service": "icat", "endpoint": "properties", "status": 403},
        {"kind": "error", "service": "icat", "endpoint": "version"},
        {"kind": "error", "service": "ids", "endpoint": "isReadOnly", "status": 404},
        {"kind": "error", "service": "topcat", "endpoint": "ping"},
    ])
    r = requests.get(f"{single.url}/icat/properties", timeout=10)
    assert (r.status_code, r.json()["code"]) == (403, "INSUFFICIENT_PRIVILEGES")
    r = requests.get(f"{single.url}/icat/version", timeout=10)
    assert (r.status_code, r.json()["code"]) == (500, "INTERNAL")
    r = requests.get(f"{single.url}/ids/isReadOnly", timeout=10)
    assert (r.status_code, r.json()["code"]) == (404, "NotFoundException")
    r = requests.get(f"{single.url}/topcat/ping", timeout=10)
    assert r.status_code == 500
    assert r.json() == {"status": 500, "code": "InternalException", "message": "Injected fault"}


def test_count_fires_first_n_calls_only_and_delete_clears(single):
    add_faults(single, {"kind": "error", "service": "ids", "endpoint": "ping", "status": 500,
                        "count": 2})
    statuses = [requests.get(f"{single.url}/ids/ping", timeout=10).status_code
                for _ in range(4)]
    assert statuses == [500, 500, 200, 200]
    assert requests.get(f"{single.url}/ids/ping", timeout=10).text == "IdsOK"
    assert faults_state(single)["faults"][0]["hits"] == 2

    add_faults(single, {"kind": "error", "service": "*", "endpoint": "*"})  # everything
    assert requests.get(f"{single.url}/icat/version", timeout=10).status_code == 500
    r = requests.delete(f"{single.url}/sim/faults", timeout=10)
    assert r.status_code == 200 and r.json() == {"cleared": True}
    state = faults_state(single)
    assert state["faults"] == []
    assert len(state["log"]) == 3  # the log survives a clear
    assert requests.get(f"{single.url}/icat/version", timeout=10).status_code == 200
    assert requests.get(f"{single.url}/ids/ping", timeout=10).text == "IdsOK"


def _probability_pattern(make_sim, seed: int, n: int) -> list[bool]:
    sim = make_sim(scenario(storage="single-level", fault_seed=seed))
    add_faults(sim, {"kind": "error", "service": "ids", "endpoint": "ping",
                     "probability": 0.5})
    pattern = [requests.get(f"{sim.url}/ids/ping", timeout=10).status_code == 500
               for _ in range(n)]
    assert faults_state(sim)["faults"][0]["hits"] == sum(pattern)
    return pattern


def test_probability_is_deterministic_under_fault_seed(make_sim):
    n = 24
    first = _probability_pattern(make_sim, 1234, n)
    again = _probability_pattern(make_sim, 1234, n)
    assert first == again
    assert 0 < sum(first) < n
    # one draw from random.Random(fault_seed) per call that matches everything else
    rng = random.Random(1234)
    assert first == [rng.random() < 0.5 for _ in range(n)]


def test_params_matching_on_query_and_form_fields(two_level):
    sim = two_level
    sid = login(sim)
    readme = datafile(sim, "notes/readme.txt")
    run42, run43 = dataset_id(sim, "run-42"), dataset_id(sim, "run-43")
    add_faults(sim, [
        {"kind": "error", "service": "ids", "endpoint": "getStatus", "status": 404,
         "params": {"datafileIds": readme.id}},  # values are compared as strings
        {"kind": "error", "service": "ids", "endpoint": "prepareData", "status": 500,
         "message": "prepare broke", "params": {"datasetIds": str(run43)}},
    ])
    base = f"{sim.url}/ids"
    r = requests.get(f"{base}/getStatus", params={"sessionId": sid, "datafileIds": readme.id},
                     timeout=10)
    assert (r.status_code, r.json()["code"]) == (404, "NotFoundException")
    scan = datafile(sim, "scan_0001.nxs")
    r = requests.get(f"{base}/getStatus", params={"sessionId": sid, "datafileIds": scan.id},
                     timeout=10)
    assert (r.status_code, r.text) == (200, "ARCHIVED")

    # form fields of a POST match too
    r = requests.post(f"{base}/prepareData", data={"sessionId": sid, "datasetIds": run43},
                      timeout=10)
    assert r.status_code == 500
    assert r.json() == {"code": "InternalException", "message": "prepare broke"}
    r = requests.post(f"{base}/prepareData", data={"sessionId": sid, "datasetIds": run42},
                      timeout=10)
    assert r.status_code == 200 and len(r.text) == 36
    assert [f["hits"] for f in faults_state(sim)["faults"]] == [1, 1]


def test_method_and_endpoint_glob_matching(single):
    sid = login(single)
    add_faults(single, {"kind": "error", "service": "icat", "endpoint": "session/*",
                        "method": "put", "status": 500, "message": "no refresh today"})
    url = f"{single.url}/icat/session/{sid}"
    r = requests.put(url, timeout=10)
    assert r.status_code == 500
    assert r.json() == {"code": "INTERNAL", "message": "no refresh today"}
    r = requests.get(url, timeout=10)
    assert r.status_code == 200 and r.json()["userName"] == "simple/alice"
    assert requests.delete(url, timeout=10).status_code == 204
    assert faults_state(single)["faults"][0]["hits"] == 1


# -- latency and stream faults -------------------------------------------------------------------

def test_latency_delays_the_answer(single):
    add_faults(single, {"kind": "latency", "service": "icat", "endpoint": "version",
                        "seconds": 0.6, "count": 1})
    t0 = time.monotonic()
    r = requests.get(f"{single.url}/icat/version", timeout=10)
    slow = time.monotonic() - t0
    assert r.status_code == 200 and "version" in r.json()
    assert slow >= 0.6
    t0 = time.monotonic()
    requests.get(f"{single.url}/icat/version", timeout=10)
    assert time.monotonic() - t0 < 0.5


def test_stall_sends_headers_then_holds_the_body(single):
    sid = login(single)
    expected = expected_bytes(single, "scan_0001.nxs")
    add_faults(single, {"kind": "stall", "service": "ids", "endpoint": "getData",
                        "seconds": 1.0, "count": 1})
    t0 = time.monotonic()
    r = get_data(single, sid, "scan_0001.nxs", stream=True)
    t_headers = time.monotonic() - t0
    assert r.status_code == 200
    assert int(r.headers["Content-Length"]) == len(expected)
    first = r.raw.read(16)
    t_body = time.monotonic() - t0
    body = first + r.raw.read()
    r.close()
    assert t_headers < 0.5, t_headers
    assert t_body >= 1.0, t_body
    assert body == expected  # a stall delays, it does not damage


def test_stall_after_bytes_goes_quiet_mid_body(single):
    sid = login(single)
    expected = expected_bytes(single, "scan_0001.nxs")
    add_faults(single, {"kind": "stall", "service": "ids", "endpoint": "getData",
                        "after_bytes": 4096, "seconds": 1.0, "count": 1})
    t0 = time.monotonic()
    r = get_data(single, sid, "scan_0001.nxs", stream=True)
    head = r.raw.read(4096)
    t_head = time.monotonic() - t0
    rest = r.raw.read()
    t_rest = time.monotonic() - t0
    r.close()
    assert head == expected[:4096] and t_head < 0.5, t_head
    assert t_rest >= 1.0, t_rest
    assert head + rest == expected


def _read_until_broken(r: requests.Response) -> tuple[bytes, Exception | None]:
    got = bytearray()
    try:
        for chunk in r.iter_content(chunk_size=512):
            got += chunk
    except (requests.exceptions.ChunkedEncodingError,
            requests.exceptions.ConnectionError) as exc:
        return bytes(got), exc
    return bytes(got), None


def test_reset_breaks_the_connection_after_n_bytes(single):
    sid = login(single)
    expected = expected_bytes(single, "scan_0001.nxs")
    add_faults(single, {"kind": "reset", "service": "ids", "endpoint": "getData",
                        "after_bytes": 5000, "count": 1})
    r = get_data(single, sid, "scan_0001.nxs", stream=True)
    assert r.status_code == 200
    got, exc = _read_until_broken(r)
    r.close()
    assert exc is not None, "the client should see a broken connection"
    assert "IncompleteRead" in str(exc) or "Connection broken" in str(exc)
    assert len(got) <= 5000 < len(expected)
    assert got == expected[: len(got)]
    # count=1: the next download is whole
    assert get_data(single, sid, "scan_0001.nxs").content == expected


def test_truncate_ends_the_body_cleanly(single):
    sid = login(single)
    expected = expected_bytes(single, "scan_0001.nxs")
    add_faults(single, {"kind": "truncate", "service": "ids", "endpoint": "getData",
                        "after_bytes": 1000, "count": 1})
    r = get_data(single, sid, "scan_0001.nxs")  # no exception: the body just ends
    assert r.status_code == 200
    assert "Content-Length" not in r.headers  # it would promise bytes that never come
    assert r.content == expected[:1000]
    r = get_data(single, sid, "scan_0001.nxs")
    assert r.content == expected
    assert int(r.headers["Content-Length"]) == len(expected)


def test_corrupt_flips_one_byte_at_the_offset(single):
    sid = login(single)
    expected = expected_bytes(single, "scan_0001.nxs")
    offset = (1 << 20) + 3  # in the second 1 MiB chunk of the stream
    add_faults(single, {"kind": "corrupt", "service": "ids", "endpoint": "getData",
                        "after_bytes": offset, "count": 1})
    got = get_data(single, sid, "scan_0001.nxs").content
    assert len(got) == len(expected)
    diffs = [i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b]
    assert diffs == [offset]
    assert got[offset] == expected[offset] ^ 0xFF
    assert get_data(single, sid, "scan_0001.nxs").content == expected


# -- state faults --------------------------------------------------------------------------------

def test_expire_sessions_for_one_user(single):
    alice = login(single)
    admin = login(single, "pollcat", "pollpass")
    out = add_faults(single, {"kind": "expire_sessions", "user": "simple/alice"})
    assert out == [{"kind": "expire_sessions", "result": 1}]
    r = requests.get(f"{single.url}/icat/session/{alice}", timeout=10)
    assert r.status_code == 403
    assert r.json() == {"code": "SESSION", "message": f"Session id:{alice} has expired"}
    assert "has expired" in r.json()["message"]
    # the IDS honours the same sessions
    r = get_data(single, alice, "notes/readme.txt")
    assert (r.status_code, r.json()["code"]) == (403, "InsufficientPrivilegesException")
    r = requests.get(f"{single.url}/icat/session/{admin}", timeout=10)
    assert r.status_code == 200 and r.json()["userName"] == "simple/pollcat"
    log = faults_state(single)["log"]
    assert log[-1]["kind"] == "expire_sessions" and log[-1]["result"] == 1


def test_forget_prepared(two_level):
    sim = two_level
    sid = login(sim)
    ids = f"{sim.url}/ids"
    run42 = dataset_id(sim, "run-42")
    keep = requests.post(f"{ids}/prepareData", data={"sessionId": sid, "datasetIds": run42},
                         timeout=10).text
    gone = requests.post(f"{ids}/prepareData", data={"sessionId": sid, "datasetIds": run42},
                         timeout=10).text
    out = add_faults(sim, {"kind": "forget_prepared", "prepared_id": gone})
    assert out == [{"kind": "forget_prepared", "result": 1}]
    r = requests.get(f"{ids}/isPrepared", params={"preparedId": gone}, timeout=10)
    assert r.status_code == 404
    assert r.json() == {"code": "NotFoundException",
                        "message": f"The preparedId {gone} is not known"}
    r = requests.get(f"{ids}/isPrepared", params={"preparedId": keep}, timeout=10)
    assert r.status_code == 200 and r.text in ("true", "false")


def test_fail_restore(two_level):
    sim = two_level
    sid = login(sim)
    ids = f"{sim.url}/ids"
    run42, run43 = dataset_id(sim, "run-42"), dataset_id(sim, "run-43")
    out = add_faults(sim, {"kind": "fail_restore", "dataset_ids": [run42]})
    assert out[0]["result"]["armed"] == 1 and out[0]["result"]["dataset_ids"] == [run42]
    bad = requests.post(f"{ids}/prepareData", data={"sessionId": sid, "datasetIds": run42},
                        timeout=10).text
    good = requests.post(f"{ids}/prepareData", data={"sessionId": sid, "datasetIds": run43},
                         timeout=10).text
    r = poll_is_prepared(sim, bad)
    assert r.status_code == 500
    assert r.json() == {"code": "InternalException", "message": "Restore failed"}
    # only the matching unit failed
    r = poll_is_prepared(sim, good)
    assert (r.status_code, r.text) == (200, "true")


# -- spec validation and scenario faults ---------------------------------------------------------

@pytest.mark.parametrize(("body", "needle"), [
    ({"kind": "explode"}, "unknown kind 'explode'"),
    ({"kind": "error", "sevrice": "ids"}, "unknown keys ['sevrice']"),
    ({"kind": "error", "service": "web"}, "unknown service 'web'"),
    ({"service": "ids"}, "kind"),
    ({"kind": "error", "count": "two"}, "count"),
    ({"kind": "latency", "seconds": "slow"}, "seconds"),
    ({"kind": "error", "probability": 2}, "probability"),
    ({"kind": "error", "params": ["datafileIds"]}, "params"),
    (7, "JSON object"),
    ([7], "JSON object"),
])
def test_malformed_spec_is_400_and_changes_nothing(single, body, needle):
    r = requests.post(f"{single.url}/sim/faults", json=body, timeout=10)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]
    # nothing half-armed that would break later calls
    assert faults_state(single)["faults"] == []
    assert requests.get(f"{single.url}/ids/ping", timeout=10).text == "IdsOK"
    assert requests.get(f"{single.url}/icat/version", timeout=10).status_code == 200


def test_non_json_body_is_400(single):
    r = requests.post(f"{single.url}/sim/faults", data="kind: error", timeout=10,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]
    assert faults_state(single)["faults"] == []


def test_scenario_faults_apply_at_start_up(make_sim):
    sim = make_sim(scenario(restore=FAST, faults=[
        {"kind": "error", "service": "ids", "endpoint": "ping", "status": 503, "count": 1,
         "message": "warming up"},
        {"kind": "fail_restore"},
    ]))
    state = faults_state(sim)
    assert [(f["kind"], f["endpoint"], f["hits"]) for f in state["faults"]] == [
        ("error", "ping", 0)]
    assert state["log"][0]["kind"] == "fail_restore"
    assert state["log"][0]["result"]["armed"] == 1

    r = requests.get(f"{sim.url}/ids/ping", timeout=10)
    assert r.status_code == 503
    assert r.json() == {"code": "DataNotOnlineException", "message": "warming up"}
    assert requests.get(f"{sim.url}/ids/ping", timeout=10).text == "IdsOK"

    # the armed restore failure hits the first restore
    sid = login(sim)
    pid = requests.post(f"{sim.url}/ids/prepareData",
                        data={"sessionId": sid, "datasetIds": dataset_id(sim, "run-43")},
                        timeout=10).text
    r = poll_is_prepared(sim, pid)
    assert r.status_code == 500
    assert r.json() == {"code": "InternalException", "message": "Restore failed"}
