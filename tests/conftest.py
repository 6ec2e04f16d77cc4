"""Shared fixtures: a simulated facility on a free 127.0.0.1 port, stopped after the test."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from simfacility.server import RunningFacility

BASE_SCENARIO: dict[str, Any] = {
    "facility": "LILS",
    "storage": "two-level",
    "restore": {"latency_s": 0.3, "bytes_per_s": 1_000_000_000},
    "session_lifetime_minutes": 120,
    "admins": ["simple/pollcat"],
    "users": [
        {"name": "simple/pollcat", "password": "pollpass"},
        {"name": "simple/alice", "password": "alicepass", "full_name": "Alice Smith",
         "email": "alice@example.org"},
        {"name": "simple/bob", "password": "bobpass", "email": "bob@example.org"},
    ],
    "investigations": [
        {"name": "INV-001", "visit_id": "1", "title": "Beamtime one", "users": ["simple/alice"],
         "datasets": [
             {"name": "run-42", "datafiles": [
                 {"name": "scan_0001.nxs", "size": 1048576 + 17},
                 {"name": "notes/readme.txt", "content": "hello"},
             ]},
             {"name": "run-43", "datafiles": [{"name": "scan_0002.nxs", "size": 4096}]},
         ]},
        {"name": "INV-002", "visit_id": "7", "title": "Bob's beamtime", "users": ["simple/bob"],
         "datasets": [{"name": "calib", "datafiles": [{"name": "c.dat", "size": 1000}]}]},
    ],
    "topcat": {"poll_delay_s": 0, "poll_interval_wait_s": 0.2},
    "downloads": [],
    "faults": [],
}


def scenario(**overrides: Any) -> dict[str, Any]:
    """A copy of the base scenario with top-level keys replaced."""
    s = copy.deepcopy(BASE_SCENARIO)
    s.update(copy.deepcopy(overrides))
    return s


@pytest.fixture
def make_sim(tmp_path) -> Iterator[Callable[..., RunningFacility]]:
    started: list[RunningFacility] = []

    def _make(scn: dict[str, Any] | str | None = None, **kwargs: Any) -> RunningFacility:
        sim = RunningFacility(scn if scn is not None else scenario(),
                              tmp_path / f"sim-data-{len(started)}", **kwargs).start()
        started.append(sim)
        return sim

    yield _make
    for sim in started:
        sim.stop()


@pytest.fixture(params=["openat2", "walk"])
def path_resolution(request, monkeypatch) -> str:
    """Local targets resolve a path in one `openat2` where the kernel has it, else by a walk of
    `O_NOFOLLOW` descriptors: modules that plant hostile things run against both."""
    from pollcat.targetfs import beneath

    if request.param == "openat2" and not beneath.available():
        pytest.skip("this kernel has no openat2")
    monkeypatch.setattr(beneath, "_AVAILABLE", request.param == "openat2")
    return request.param
