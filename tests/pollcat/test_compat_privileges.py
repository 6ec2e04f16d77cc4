"""pollcat where the functional account is a TopCAT admin but ICAT lets it read too little.

The three privileges are separate settings in production (ICAT read rules, IDS rootUserNames,
TopCAT adminUserNames); the simulator plays them apart. pollcat must name the missing one
instead of delivering nothing, or an empty download, under a misleading reason.
"""

from __future__ import annotations

from pollcat.icat import IcatSession
from pollcat.topcat import TopcatAdmin
from tests.conftest import scenario
from tests.support import (
    delivered_files,
    pipeline_for,
    statuses,
    sweep_until_complete,
    wait_status,
)

ALICE_RUN42 = {"user": "simple/alice", "transport": "globus", "file_name": "alice_run42",
               "items": [{"investigation": "INV-001", "dataset": "run-42"}]}


def split(make_sim, icat_read_all: list[str]):
    return make_sim(scenario(admins=[], topcat={"admin_user_names": ["simple/pollcat"],
                                                "poll_interval_wait_s": 0.2},
                             icat={"read_all": icat_read_all}, downloads=[ALICE_RUN42]))


def client(sim) -> TopcatAdmin:
    icat = IcatSession(sim.url, auth="simple", username="pollcat", password="pollpass",
                       timeout=10)
    return TopcatAdmin(sim.url, "LILS", icat, timeout=10)


def test_is_admin_reports_only_topcats_privilege(make_sim):
    limited = split(make_sim, icat_read_all=[])
    assert client(limited).is_admin() is True  # although ICAT lets it read nothing
    not_admin = make_sim(scenario(admins=[], icat={"read_all": ["simple/pollcat"]}))
    assert client(not_admin).is_admin() is False


def test_topcat_admin_without_icat_read_rights_is_not_delivered_and_says_why(make_sim,
                                                                              tmp_path):
    sim = split(make_sim, icat_read_all=[])
    wait_status(sim.url, "RESTORING")
    pipe = pipeline_for(sim, tmp_path)
    outcomes = [o for _ in range(2) for o in pipe.sweep()]
    assert "completed" not in [o.outcome for o in outcomes]
    assert any("not readable by the functional account" in o.reason for o in outcomes)
    assert delivered_files(tmp_path / "target/globus") == {}
    assert statuses(sim.url)[1] != "COMPLETE"


def test_the_same_setup_with_an_icat_read_rule_delivers(make_sim, tmp_path):
    sim = split(make_sim, icat_read_all=["simple/pollcat"])
    wait_status(sim.url, "RESTORING")
    sweep_until_complete(pipeline_for(sim, tmp_path), sim.url)
    assert len(delivered_files(tmp_path / "target/globus")) == 2
