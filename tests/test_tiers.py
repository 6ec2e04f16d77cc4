"""The unit tier (`make test-fast`, `pytest -m unit`) stays what README says: large enough to be
worth a one-minute loop, and free of servers.

The selection is explicit: a module says `pytestmark = pytest.mark.unit` (or a test says
`@pytest.mark.unit`). `_unit_tier_stays_pure` in tests/conftest.py fails a unit test that opens a
TCP/IP socket or starts a process; these tests check that guard and the collected selection.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import UnitTierViolation

pytestmark = pytest.mark.unit

#: the unit tier had 475 tests when it was made; a module losing its mark shows up here
MIN_UNIT_TESTS = 450

#: fixtures that start a server or a process (the simulated facility, sshd, a Prefect server,
#: a moto or Globus server, useradd): no unit test may use one. (PostgreSQL is asked for with
#: `getfixturevalue`, invisible here: the socket guard catches it.)
SERVER_FIXTURES = frozenset({
    "make_sim", "sftp", "sftp_server", "helper_sshd", "prefect_server", "cluster", "endpoint",
    "globus", "swept", "account_db",
})


def _whole_suite_collected(config: pytest.Config) -> bool:
    """True when this run collected every test module (`pytest`, `pytest tests`, with or
    without `-m`), not a chosen file or `-k` subset."""
    root = config.rootpath
    here = Path(config.invocation_params.dir)
    return not config.getoption("keyword") and all(
        (here / arg.split("::")[0]).resolve() in (root, root / "tests") for arg in config.args)


def test_the_unit_tier_is_large_and_starts_no_server(request):
    items = request.session.items
    unit = [item for item in items if item.get_closest_marker("unit")]
    offenders = {item.nodeid: sorted(SERVER_FIXTURES & set(item.fixturenames))
                 for item in unit if SERVER_FIXTURES & set(item.fixturenames)}
    assert not offenders, f"unit tests that use a server fixture: {offenders}"
    if not _whole_suite_collected(request.config):
        return  # a chosen subset: the counts below need every module
    markexpr = request.config.getoption("markexpr")
    if markexpr in ("", "unit"):
        assert len(unit) >= MIN_UNIT_TESTS, (
            f"the unit tier has {len(unit)} tests, fewer than {MIN_UNIT_TESTS}: did a module "
            "lose its `pytestmark = pytest.mark.unit`?")
    if markexpr == "":  # the whole suite: every name above must still be a fixture in use
        used = {name for item in items for name in item.fixturenames}
        assert SERVER_FIXTURES <= used, (
            f"no test uses {sorted(SERVER_FIXTURES - used)}: update SERVER_FIXTURES")


def test_a_unit_test_cannot_connect_or_listen():
    with pytest.raises(UnitTierViolation, match="marked `unit`"):
        socket.create_connection(("127.0.0.1", 9), timeout=1)
    with socket.socket() as s, pytest.raises(UnitTierViolation, match="socket.bind"):
        s.bind(("127.0.0.1", 0))
    left, right = socket.socketpair()  # a local pair (asyncio's self-pipe) is fine
    left.close()
    right.close()


def test_a_unit_test_cannot_start_a_process():
    with pytest.raises(UnitTierViolation, match="started a process"):
        subprocess.run(["true"], check=False)


def test_under_loadgroup_every_grouped_test_carries_its_group(request):
    """`make test` (`--dist loadgroup`) keeps an xdist_group on one worker only if the group
    reaches xdist's scheduler in the node id (tests/conftest.py `_suffix_groups`)."""
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not an xdist worker under --dist loadgroup")
    grouped = [item for item in request.session.items if item.get_closest_marker("xdist_group")]
    assert grouped, "no xdist_group assigned"
    lost = [item.nodeid for item in grouped if "@" not in item.nodeid.rpartition("]")[2]]
    assert not lost, f"{len(lost)} grouped tests would run anywhere, e.g. {lost[:3]}"
