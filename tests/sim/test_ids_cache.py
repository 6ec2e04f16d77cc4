"""A finite IDS cache: the Tidier archives by size, whatever is prepared and not yet fetched.

Main storage holds `start_archiving_bytes` at most; above that the units that came online first
are archived until `stop_archiving_bytes` remain (ids.server Tidier with
startArchivingLevel1024bytes / stopArchivingLevel1024bytes; sim-fidelity audit row 2).
"""

from __future__ import annotations

import time

import pytest
import requests

from tests.conftest import scenario
from tests.sim.test_ids import ds_id, ids, prepare, wait_prepared, wait_until

UNIT = 100_000  # bytes per dataset


def cache_scenario(start: int, stop: int, check_interval_s: float = 0.05) -> dict:
    datasets = [{"name": f"ds{i}", "datafiles": [{"name": f"f{i}.dat", "size": UNIT}]}
                for i in range(4)]
    return scenario(
        restore={"latency_s": 0.1, "bytes_per_s": 1_000_000_000},
        ids={"cache": {"start_archiving_bytes": start, "stop_archiving_bytes": stop,
                       "check_interval_s": check_interval_s}},
        investigations=[{"name": "INV-C", "users": ["simple/alice"], "datasets": datasets}])


def is_prepared(sim, pid: str) -> str:
    return requests.get(ids(sim) + "/isPrepared", params={"preparedId": pid}, timeout=10).text


@pytest.fixture
def sim(make_sim):
    return make_sim(cache_scenario(start=int(2.5 * UNIT), stop=int(1.5 * UNIT)))


def test_prepared_but_unfetched_data_is_evicted_by_newer_restores(sim):
    alice = sim.facility.sessions.login("simple/alice")
    first = prepare(sim, alice, datasetIds=str(ds_id(sim, "ds0")))
    wait_prepared(sim, first)
    for name in ("ds1", "ds2"):
        wait_prepared(sim, prepare(sim, alice, datasetIds=str(ds_id(sim, name))))
    # 3 units > 2.5: the oldest (ds0, never fetched) went back to the archive
    wait_until(lambda: sim.facility.storage.evictions >= 1)
    assert sim.facility.storage.online_bytes() <= 2.5 * UNIT
    r = requests.get(ids(sim) + "/getData", params={"preparedId": first}, timeout=10)
    assert r.status_code == 503 and r.json()["code"] == "DataNotOnlineException"
    # asking again restores it (and evicts the next oldest)
    wait_prepared(sim, first)
    r = requests.get(ids(sim) + "/getData", params={"preparedId": first}, timeout=10)
    assert r.status_code == 200


def test_a_selection_bigger_than_the_cache_never_becomes_prepared(sim):
    alice = sim.facility.sessions.login("simple/alice")
    everything = ",".join(str(ds_id(sim, f"ds{i}")) for i in range(4))  # 4 units > 2.5
    pid = prepare(sim, alice, datasetIds=everything)
    deadline = time.monotonic() + 3.0
    answers = set()
    while time.monotonic() < deadline:
        answers.add(is_prepared(sim, pid))
        time.sleep(0.1)
    assert answers == {"false"}
    assert sim.facility.storage.evictions >= 1  # restored, then evicted, again and again


def test_a_unit_being_streamed_is_not_evicted(sim):
    storage = sim.facility.storage
    alice = sim.facility.sessions.login("simple/alice")
    held = ds_id(sim, "ds0")
    held_file = sim.store.datafiles[sim.store.datasets[held].datafile_ids[0]]
    others = f"{ds_id(sim, 'ds1')},{ds_id(sim, 'ds2')}"
    wait_prepared(sim, prepare(sim, alice, datasetIds=str(held)))
    storage.lock_shared([held])  # what a running getData holds
    try:
        prepare(sim, alice, datasetIds=others)
        wait_until(lambda: storage.evictions >= 2)
        assert storage.is_online(held_file)  # oldest, but in use: the newer ones went
    finally:
        storage.unlock_shared([held])
    prepare(sim, alice, datasetIds=others)
    wait_until(lambda: not storage.is_online(held_file))  # released: now it goes first


def test_no_cache_key_means_nothing_is_ever_evicted(make_sim):
    sim = make_sim(scenario(restore={"latency_s": 0.1, "bytes_per_s": 1_000_000_000}))
    alice = sim.facility.sessions.login("simple/alice")
    pid = prepare(sim, alice, datasetIds=str(ds_id(sim, "run-42")))
    wait_prepared(sim, pid)
    time.sleep(0.3)
    assert sim.facility.storage.evictions == 0 and is_prepared(sim, pid) == "true"
