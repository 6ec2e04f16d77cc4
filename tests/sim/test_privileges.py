"""ICAT read rules, IDS rootUserNames and TopCAT adminUserNames as three separate settings.

`admins` stays the shorthand for all three. The case a facility gets wrong most often is played
here: the functional account is a TopCAT admin, but ICAT lets it read only some investigations
(sim-fidelity audit row 5).
"""

from __future__ import annotations

import requests

from tests.conftest import scenario
from tests.sim.test_topcat import ALICE_INV, admin_downloads, login


def split_scenario(**extra) -> dict:
    return scenario(
        admins=[],
        restore={"latency_s": 0.1, "bytes_per_s": 1_000_000_000},
        topcat={"admin_user_names": ["simple/pollcat"], "poll_interval_wait_s": 0.2},
        ids={"root_user_names": ["simple/bob"]},
        icat={"read_all": ["simple/carol"]},
        users=[{"name": "simple/pollcat", "password": "pollpass"},
               {"name": "simple/alice", "password": "alicepass"},
               {"name": "simple/bob", "password": "bobpass"},
               {"name": "simple/carol", "password": "carolpass"}],
        downloads=[{**ALICE_INV, "transport": "globus"}], **extra)


def icat_datafiles(sim, sid: str) -> list[dict]:
    r = requests.get(f"{sim.url}/icat/entityManager", timeout=10, params={
        "sessionId": sid, "query": "SELECT df FROM Datafile df INCLUDE df.dataset"})
    assert r.status_code == 200, r.text
    return r.json()


def service_status(sim, sid: str) -> requests.Response:
    return requests.get(f"{sim.url}/ids/getServiceStatus", params={"sessionId": sid},
                        timeout=10)


def test_topcat_admin_with_limited_icat_rules(make_sim):
    sim = make_sim(split_scenario())
    pollcat = login(sim, "pollcat", "pollpass")
    # TopCAT: admin; the download is visible and can be completed
    (d,) = admin_downloads(sim, pollcat)
    assert d["userName"] == "simple/alice"
    # ICAT: reads nothing (not an investigation user, not in read_all)
    assert icat_datafiles(sim, pollcat) == []
    (df_id,) = [df.id for df in sim.store.datafiles.values() if df.name == "c.dat"]
    r = requests.get(f"{sim.url}/ids/getData", timeout=10,
                     params={"sessionId": pollcat, "datafileIds": str(df_id)})
    assert r.status_code == 403 and r.json()["code"] == "InsufficientPrivilegesException"
    # IDS: not root
    assert service_status(sim, pollcat).status_code == 403


def test_each_setting_grants_only_its_own_privilege(make_sim):
    sim = make_sim(split_scenario())
    bob, carol = login(sim, "bob", "bobpass"), login(sim, "carol", "carolpass")
    n_files = len(sim.store.datafiles)
    # carol reads all of ICAT, and through it all of the IDS, but is no TopCAT or IDS admin
    assert len(icat_datafiles(sim, carol)) == n_files
    assert service_status(sim, carol).status_code == 403
    r = requests.get(f"{sim.url}/topcat/admin/downloads", timeout=10,
                     params={"facilityName": "LILS", "sessionId": carol})
    assert r.status_code == 403
    # bob is IDS root but reads only his own investigation
    assert service_status(sim, bob).status_code == 200
    assert [row["Datafile"]["name"] for row in icat_datafiles(sim, bob)] == ["c.dat"]


def test_admins_key_still_grants_all_three(make_sim):
    sim = make_sim(scenario(downloads=[{**ALICE_INV, "transport": "globus"}]))
    pollcat = login(sim, "pollcat", "pollpass")
    assert len(icat_datafiles(sim, pollcat)) == len(sim.store.datafiles)
    assert service_status(sim, pollcat).status_code == 200
    assert len(admin_downloads(sim, pollcat)) == 1
