"""TopCAT / datagateway-download-api version profiles, mail templating and mail timing.

Each test drives the simulated TopCAT over HTTP, as pollcat does, and checks what a client can
observe: the version string, which admin calls exist, whether `customValue` reaches the user's
mail, and the mail text and timing (sim-fidelity audit rows 1, 6, 10, 11).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from simfacility.scenario import ScenarioError, load_scenario
from simfacility.substitutor import SubstitutionCycle, substitute
from tests.conftest import scenario
from tests.sim.test_topcat import (
    ALICE_INV,
    download,
    login,
    mails_for,
    put_status,
    wait_for,
    wait_status,
)

BODIES = {"globus": "Hi ${userName}: ${fileName}. Where: ${customValue:-see the portal}. "
                    "Link: ${downloadUrl}"}
PROFILES = {  # profile -> (version, customValue?, admin prepare?)
    "topcat-2.4": ("2.4.9", False, False),
    "download-api-3.0": ("3.0.0", False, False),
    "download-api-3.1": ("3.1.0", False, True),
    "download-api-3.2": ("3.2.0", True, True),
}


def profile_scenario(profile: str | None = None, wait_s: float = 0.2, **topcat) -> dict:
    tc = {"poll_delay_s": 0, "poll_interval_wait_s": wait_s, "mail": {"bodies": BODIES},
          **topcat}
    if profile is not None:
        tc["profile"] = profile
    return scenario(restore={"latency_s": 0.1, "bytes_per_s": 1_000_000_000}, topcat=tc,
                    downloads=[{**ALICE_INV, "transport": "globus", "file_name": "run42"}])


def prepare(sim, sid: str, download_id: int) -> requests.Response:
    return requests.put(f"{sim.url}/topcat/admin/download/{download_id}/prepare", timeout=10,
                        data={"facilityName": "LILS", "sessionId": sid})


@pytest.mark.parametrize("profile", list(PROFILES))
def test_each_profile_has_its_version_and_feature_set(make_sim, profile):
    version, custom_value, admin_prepare = PROFILES[profile]
    sim = make_sim(profile_scenario(profile))
    admin = login(sim, "pollcat", "pollpass")
    assert requests.get(f"{sim.url}/topcat/version", timeout=5).json() == version
    wait_status(sim, admin, 1, "RESTORING")

    resp = prepare(sim, admin, 1)
    if admin_prepare:
        assert resp.status_code == 200, resp.text
    else:  # Jersey has no such resource: a plain 404, not "could not find download"
        assert resp.status_code == 404
        assert resp.json() == {"status": 404, "code": "NotFoundException",
                               "message": "HTTP 404 Not Found"}

    assert put_status(sim, admin, 1, "COMPLETE", customValue="/data/alice/run42").status_code \
        == 200
    (mail,) = wait_for(lambda: mails_for(sim, 1))
    if custom_value:  # sent at once, with downloadUrl null (left as written)
        assert "Where: /data/alice/run42." in mail["body"]
        assert "Link: ${downloadUrl}" in mail["body"]
    else:  # the field is ignored; StatusCheck's mail has the default and the real link
        assert "Where: see the portal." in mail["body"]
        assert "/ids/getData?preparedId=" in mail["body"]


def test_queued_exists_only_from_3_0(make_sim):
    old = make_sim(profile_scenario("topcat-2.4"))
    admin = login(old, "pollcat", "pollpass")
    resp = put_status(old, admin, 1, "QUEUED")
    assert resp.status_code == 500 and "DownloadStatus.QUEUED" in resp.json()["message"]
    new = make_sim(profile_scenario("download-api-3.0"))
    admin = login(new, "pollcat", "pollpass")
    wait_status(new, admin, 1, "RESTORING")
    assert put_status(new, admin, 1, "QUEUED").status_code == 200
    # the admin PUT turns QUEUED -> RESTORING into PREPARING (3.x)
    assert put_status(new, admin, 1, "RESTORING").status_code == 200
    assert download(new, admin, 1)["status"] in ("PREPARING", "RESTORING")


def test_version_key_overrides_the_profile_and_drives_the_features(make_sim):
    sim = make_sim(profile_scenario("download-api-3.2", version="3.1.2-SNAPSHOT"))
    admin = login(sim, "pollcat", "pollpass")
    assert requests.get(f"{sim.url}/topcat/version", timeout=5).json() == "3.1.2-SNAPSHOT"
    wait_status(sim, admin, 1, "RESTORING")
    assert prepare(sim, admin, 1).status_code == 200
    put_status(sim, admin, 1, "COMPLETE", customValue="/x")
    (mail,) = wait_for(lambda: mails_for(sim, 1))
    assert "Where: see the portal." in mail["body"]  # 3.1: no customValue


def test_bad_profile_or_version_is_a_scenario_error(tmp_path):
    with pytest.raises(ScenarioError, match="topcat.profile"):
        load_scenario(scenario(topcat={"profile": "topcat-9"}), tmp_path)
    with pytest.raises(ScenarioError, match="topcat.version"):
        load_scenario(scenario(topcat={"version": "latest"}), tmp_path)


def test_status_check_mails_on_its_own_schedule_after_an_agent_completes(make_sim):
    """The mail after an admin COMPLETE waits for the next check poll_interval_wait after the
    previous one (production default 600 s), not 0.1 s as the simulator used to do."""
    sim = make_sim(profile_scenario("topcat-2.4", wait_s=1.5))
    admin = login(sim, "pollcat", "pollpass")
    wait_status(sim, admin, 1, "RESTORING")
    time.sleep(0.3)  # StatusCheck has looked at the download since it was prepared
    completed = time.time()
    assert put_status(sim, admin, 1, "COMPLETE").status_code == 200
    time.sleep(0.4)
    assert mails_for(sim, 1) == []  # not yet: the previous check was under 1.5 s ago
    (mail,) = wait_for(lambda: mails_for(sim, 1), timeout=5)
    assert 0.5 <= mail["sent_at"] - completed <= 2.0


# ------------------------------------------------------------------ StringSubstitutor


def test_substitutor_defaults_escapes_recursion_and_unknowns():
    values = {"a": "A", "b": "${a}!", "e": "$${a}", "empty": ""}
    assert substitute("${a} ${b} ${nope} ${nope:-dflt} ${empty:-dflt}", values) \
        == "A A! ${nope} dflt "
    assert substitute("$${a} $$ $a ${e}", values) == "${a} $$ $a ${a}"
    assert substitute("$$${a}", values) == "$${a}"  # one `$` consumed per escape
    assert substitute("${nope:-${a}}", values) == "A"  # defaults are substituted too
    assert substitute("${a${b}}", values) == "${a${b}}"  # names are not substituted
    assert substitute("${a", values) == "${a"


def test_substitutor_cycle_raises_like_java():
    with pytest.raises(SubstitutionCycle, match=r"Infinite loop .* \$\{x\}: x->y->x"):
        substitute("${x}", {"x": "${y}", "y": "${x}"})
    with pytest.raises(SubstitutionCycle):
        substitute("${customValue}", {"customValue": "look: ${customValue}"})


def test_custom_value_is_substituted_recursively_and_escapes_survive(make_sim):
    sim = make_sim(profile_scenario("download-api-3.2"))
    admin = login(sim, "pollcat", "pollpass")
    wait_status(sim, admin, 1, "RESTORING")
    put_status(sim, admin, 1, "COMPLETE", customValue="/d/${fileName}/$${userName}")
    (mail,) = wait_for(lambda: mails_for(sim, 1))
    assert "Where: /d/run42/${userName}." in mail["body"]


def test_custom_value_cycle_fails_the_complete_put_and_changes_nothing(make_sim):
    sim = make_sim(profile_scenario("download-api-3.2"))
    admin = login(sim, "pollcat", "pollpass")
    wait_status(sim, admin, 1, "RESTORING")
    resp = put_status(sim, admin, 1, "COMPLETE", customValue="/d/${customValue}")
    assert resp.status_code == 500
    assert resp.json()["message"].startswith("java.lang.IllegalStateException Infinite loop")
    d = download(sim, admin, 1)
    assert d["status"] == "RESTORING" and "completedAt" not in d and not d["isEmailSent"]
    assert mails_for(sim, 1) == []
    # escaped as an agent should, the same text goes through
    resp = put_status(sim, admin, 1, "COMPLETE", customValue="/d/$${customValue}")
    assert resp.status_code == 200
    (mail,) = mails_for(sim, 1)
    assert "Where: /d/${customValue}." in mail["body"]


def test_a_file_name_with_a_cycle_stops_the_status_check_mail(make_sim):
    sim = make_sim(scenario(
        restore={"latency_s": 0.1, "bytes_per_s": 1_000_000_000},
        topcat={"profile": "topcat-2.4", "poll_interval_wait_s": 0.2,
                "mail": {"bodies": {"globus": "File ${fileName}"}}},
        downloads=[{**ALICE_INV, "transport": "globus", "file_name": "x${fileName}"}]))
    admin = login(sim, "pollcat", "pollpass")
    wait_status(sim, admin, 1, "RESTORING")
    assert put_status(sim, admin, 1, "COMPLETE").status_code == 200  # 2.4: no mail in the PUT
    time.sleep(1.0)
    assert mails_for(sim, 1) == []


def test_the_legacy_facility_scenario_plays_what_it_says(make_sim):
    sim = make_sim(str(Path(__file__).resolve().parents[2] / "scenarios/legacy-facility.yaml"))
    assert requests.get(f"{sim.url}/topcat/version", timeout=5).json() == "2.4.9"
    cfg = sim.facility.config
    assert cfg.ids_cache.start_archiving_bytes == 60_000_000
    assert cfg.topcat.admin_user_names == ["simple/pollcat"]
    odd = {df.name: df for df in sim.store.datafiles.values()}
    assert odd["never_sized.dat"].file_size == 0 and odd["never_sized.dat"].checksum is None
    admin = requests.post(f"{sim.url}/icat/session", timeout=10, data={"json": (
        '{"plugin":"simple","credentials":[{"username":"pollcat"},{"password":"pollpass"}]}')})
    sid = admin.json()["sessionId"]
    r = requests.get(f"{sim.url}/ids/getServiceStatus", params={"sessionId": sid}, timeout=10)
    assert r.status_code == 403  # TopCAT admin and ICAT reader, but no IDS root
