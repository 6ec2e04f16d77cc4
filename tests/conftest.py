"""Shared fixtures: a simulated facility on a free 127.0.0.1 port, stopped after the test.

Also the test tiers and the parallel groups (README, "Development"):

* `make test-fast` (`pytest -m unit`) runs the tests marked `unit`: each such module says
  `pytestmark = pytest.mark.unit` (or a test says `@pytest.mark.unit`). A unit test opens no
  TCP/IP socket and starts no process; `_unit_tier_stays_pure` below makes either fail the test,
  and tests/test_tiers.py guards the selection (its size, no server fixture in it).
* `make test` runs everything on xdist workers with `--dist loadgroup`. The tests of one
  `xdist_group` run on one worker, one after another; `_xdist_group` below assigns the groups.
"""

from __future__ import annotations

import copy
import socket
import subprocess
import threading
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


# -- the unit tier -----------------------------------------------------------------------------


class UnitTierViolation(AssertionError):
    """A `unit` test opened a TCP/IP socket or started a process (an AssertionError, so no
    `except OSError` in the code under test swallows it)."""


@pytest.fixture(autouse=True)
def _unit_tier_stays_pure(request, monkeypatch) -> None:
    """For tests marked `unit`: connecting or binding an AF_INET/AF_INET6 socket, or starting a
    process, raises `UnitTierViolation`. Threads that were running before the test (a server
    an earlier test of this worker left behind, a client's background thread) are spared."""
    if request.node.get_closest_marker("unit") is None:
        return
    spared = {t.ident for t in threading.enumerate()} - {threading.get_ident()}
    nodeid = request.node.nodeid

    def violation(what: str) -> UnitTierViolation:
        return UnitTierViolation(f"{nodeid} is marked `unit` but {what}: unit tests touch no "
                                 "socket and start no process (drop the mark, see README)")

    for name in ("connect", "connect_ex", "bind"):
        original = getattr(socket.socket, name)

        def guarded(self, *args, _original=original, _name=name, **kwargs):
            if (self.family in (socket.AF_INET, socket.AF_INET6)
                    and threading.get_ident() not in spared):
                raise violation(f"called socket.{_name}{args}")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(socket.socket, name, guarded)

    popen_init = subprocess.Popen.__init__

    def guarded_popen(self, args, *rest, **kwargs):
        if threading.get_ident() not in spared:
            raise violation(f"started a process {args!r}")
        popen_init(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded_popen)


# -- parallel groups (pytest-xdist, --dist loadgroup) ------------------------------------------

#: tests/prefect_server/ (a real `prefect server start` on SQLite or PostgreSQL, process
#: workers, Chromium, `make demo`; limits in seconds; module-scoped servers) in two chains: a
#: module never runs beside another of its chain, and each chain holds one of the two
#: PostgreSQL-backed heavyweights. One chain of all seven took 1,021 s on 4 workers, the whole
#: run's length; two chains side by side took 615 s (a, with the systemd units then) and 534 s
#: (b). A new module joins chain b.
PREFECT_SERVER_CHAINS = {
    "test_scale_out.py": "prefect-server-a",
    "test_demo.py": "prefect-server-a",
    "test_schedule.py": "prefect-server-a",
    "test_systemd_units.py": "prefect-server-b",
    "test_alerts.py": "prefect-server-b",
    "test_worker_restart.py": "prefect-server-b",
    "test_ui.py": "prefect-server-b",
}
#: modules whose assertions hold a bound in wall-clock seconds (a sub-second header, a paged
#: query, a sweep's duration): they run one after another rather than against each other
WALL_CLOCK_MODULES = {
    "tests/sim/test_faults.py",
    "tests/sim/test_icat.py",
    "tests/sim/test_limits.py",
    "tests/pollcat/test_state_machine.py",
}


def _xdist_group(item: pytest.Item) -> str | None:
    rel = item.path.relative_to(item.config.rootpath).as_posix()
    if rel.startswith("tests/prefect_server/"):
        return PREFECT_SERVER_CHAINS.get(item.path.name, "prefect-server-b")
    if rel.startswith("tests/flows/"):  # their conftest starts one Prefect test harness: once
        return "prefect-harness"
    if rel in WALL_CLOCK_MODULES:
        return "wall-clock"
    # a module-scoped fixture of the tests (a sweep of 60 hostile names, PostgreSQL, sshd, a
    # moto server) is made once per worker that runs the module: keep the module on one worker
    defs = getattr(item, "_fixtureinfo", None)
    for fixturedefs in (defs.name2fixturedefs.values() if defs else ()):
        last = fixturedefs[-1]
        if (last.scope in ("module", "package", "session")
                and getattr(last.func, "__module__", "").startswith("tests")):
            return item.module.__name__
    return None


@pytest.hookimpl(tryfirst=True)  # before xdist reads the marks
def pytest_collection_modifyitems(config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("xdist_group") is None and (group := _xdist_group(item)):
            item.add_marker(pytest.mark.xdist_group(group))
    if getattr(config.option, "loadgroup", False):  # an xdist worker under --dist loadgroup
        # the two Prefect server chains are the run's critical path: first in the queue (xdist
        # queues work in collection order under --no-loadscope-reorder, as `make test` runs)
        items.sort(key=lambda item: not str(_group_of(item)).startswith("prefect-server"))
        _suffix_groups(items)


def _group_of(item: pytest.Item) -> str | None:
    mark = item.get_closest_marker("xdist_group")
    return (mark.args[0] if mark.args else mark.kwargs.get("name")) if mark else None


def _suffix_groups(items: list[pytest.Item]) -> None:
    """xdist sends a group to one worker by the `@<group>` it appends to each node id, but
    pytest-xdist 3.8 writes `item._nodeid`, which pytest 9.2 no longer reads (a node id is now
    `item._id`, a NodeId): `--dist loadgroup` would silently schedule test by test. So append
    it here, as xdist does, where pytest has no `_nodeid` (tests/test_tiers.py checks it)."""
    try:
        from _pytest.nodeid import NodeId
    except ImportError:  # an older pytest: xdist's own hook does it
        return
    for item in items:
        if hasattr(item, "_nodeid"):
            return
        names = {str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                 for mark in item.iter_markers("xdist_group")}
        if names:
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(sorted(names))}")
