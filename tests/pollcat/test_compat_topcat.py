"""pollcat's TopCAT client on each TopCAT / download-api version the simulator plays.

Outcomes checked: the feature flags read from `GET /topcat/version`, whether the delivery
location reaches the user's mail, whether the admin `prepare` is called at all, and that text
with `${...}` in it neither expands nor breaks COMPLETE. The end-to-end test delivers a real
download on every profile, including a re-preparation after the IDS forgot the preparedId.
"""

from __future__ import annotations

import logging

import pytest

from pollcat import topcat as topcat_mod
from pollcat.icat import IcatSession
from pollcat.topcat import TopcatAdmin, TopcatFeatures, escape_substitution, parse_version
from simfacility.substitutor import substitute
from tests.conftest import scenario
from tests.support import (
    crc_hex,
    delivered_files,
    downloads,
    pipeline_for,
    sweep_until_complete,
    wait_for,
    wait_status,
)

PROFILES = {  # profile -> (customValue, admin prepare)
    "topcat-2.4": (False, False),
    "download-api-3.0": (False, False),
    "download-api-3.1": (False, True),
    "download-api-3.2": (True, True),
}
BODY = "Hello ${userName}. Your data: ${customValue:-see the portal}"
ALICE_RUN42 = {"user": "simple/alice", "transport": "globus", "file_name": "alice_run42",
               "email": "alice@example.org",
               "items": [{"investigation": "INV-001", "dataset": "run-42"}]}


def profile_sim(make_sim, profile: str):
    return make_sim(scenario(
        topcat={"profile": profile, "poll_delay_s": 0, "poll_interval_wait_s": 0.2,
                "mail": {"bodies": {"globus": BODY}}},
        downloads=[ALICE_RUN42]))


def admin_client(sim) -> TopcatAdmin:
    icat = IcatSession(sim.url, auth="simple", username="pollcat", password="pollpass",
                       timeout=10)
    return TopcatAdmin(sim.url, "LILS", icat, timeout=10)


def prepare_calls(sim) -> dict:
    """A zero-second latency fault on the admin prepare: its `hits` count the calls."""
    return sim.add_fault(kind="latency", service="topcat", endpoint="admin/download/*/prepare",
                         seconds=0)


def hits(sim, fault: dict) -> int:
    return next(f["hits"] for f in sim.facility.faults.list() if f["id"] == fault["id"])


@pytest.fixture(autouse=True)
def _fresh_warnings():
    topcat_mod._WARNED_NO_CUSTOM_VALUE.clear()
    yield
    topcat_mod._WARNED_NO_CUSTOM_VALUE.clear()


def test_version_parsing_and_flags():
    assert parse_version("3.2.1-SNAPSHOT") == (3, 2, 1)
    assert parse_version("2.4") == (2, 4, 0)
    assert parse_version("unknown") is None
    old = TopcatFeatures.of("garbage")  # unreadable: the oldest feature set
    assert not old.supports_custom_value and not old.supports_admin_prepare
    assert TopcatFeatures.of("3.1.9").supports_admin_prepare
    assert not TopcatFeatures.of("3.1.9").supports_custom_value
    assert TopcatFeatures.of("3.2.0").supports_custom_value


@pytest.mark.parametrize("text", ["/data/${fileName}", "a $${b} c", "$$${x}", "${a:-b}", "$",
                                  "cost: $5 {x}", "${customValue}", "}${"])
def test_escaped_text_comes_out_of_string_substitutor_unchanged(text):
    values = {"fileName": "EXPANDED", "customValue": escape_substitution(text), "a": "A"}
    assert substitute("${customValue}", values) == text


@pytest.mark.parametrize("profile", list(PROFILES))
def test_client_adapts_to_each_profile(make_sim, caplog, profile):
    custom_value, admin_prepare = PROFILES[profile]
    sim = profile_sim(make_sim, profile)
    wait_status(sim.url, "RESTORING")
    client = admin_client(sim)
    assert client.features.supports_custom_value is custom_value
    assert client.features.supports_admin_prepare is admin_prepare
    counter = prepare_calls(sim)
    assert client.prepare(1) is admin_prepare
    assert hits(sim, counter) == (1 if admin_prepare else 0)  # never called where it is missing

    with caplog.at_level(logging.WARNING, logger="pollcat.topcat"):
        client.set_status(1, "COMPLETE", "/deliveries/alice/alice_run42")
        admin_client(sim).set_status(1, "COMPLETE", "/deliveries/alice/alice_run42")
    warnings = [r for r in caplog.records if "will not see the delivery location" in r.message]
    assert len(warnings) == (0 if custom_value else 1)  # told once, not per call
    assert downloads(sim.url)[1]["status"] == "COMPLETE"
    mail = wait_for(lambda: [m for m in sim.facility.mail_outbox if m["download_id"] == 1],
                    what="the mail")[0]
    if custom_value:
        assert mail["body"].endswith("Your data: /deliveries/alice/alice_run42")
    else:
        assert mail["body"].endswith("Your data: see the portal")


def test_dollar_brace_in_a_custom_value_is_neither_expanded_nor_fatal(make_sim):
    sim = profile_sim(make_sim, "download-api-3.2")
    wait_status(sim.url, "RESTORING")
    client = admin_client(sim)
    # unescaped, `${customValue}` inside the customValue is a cycle: TopCAT 3.2 answers 500
    location = "/deliveries/run_${customValue}/${fileName}"
    client.set_status(1, "COMPLETE", location)
    assert downloads(sim.url)[1]["status"] == "COMPLETE"
    (mail,) = [m for m in sim.facility.mail_outbox if m["download_id"] == 1]
    assert mail["body"].endswith(f"Your data: {location}")


@pytest.mark.parametrize("profile", list(PROFILES))
def test_end_to_end_on_each_profile_with_a_forgotten_prepared_id(make_sim, tmp_path, profile):
    custom_value, admin_prepare = PROFILES[profile]
    sim = profile_sim(make_sim, profile)
    wait_status(sim.url, "RESTORING")
    old = downloads(sim.url)[1]["preparedId"]
    sim.add_fault(kind="forget_prepared", prepared_id=old)
    counter = prepare_calls(sim)
    pipe = pipeline_for(sim, tmp_path, custom_value="{path}")
    sweep_until_complete(pipe, sim.url)

    files = delivered_files(tmp_path / "target/globus")
    by_name = {df.name: df for df in sim.store.datafiles.values()}
    assert sorted(files) == ["alice/alice_run42/INV-001/1/run-42/notes/readme.txt",
                             "alice/alice_run42/INV-001/1/run-42/scan_0001.nxs"]
    for rel, path in files.items():
        df = by_name[rel.split("run-42/", 1)[1]]
        assert path.stat().st_size == df.size and int(crc_hex(path), 16) == int(df.checksum, 16)
    d = downloads(sim.url)[1]
    assert d["status"] == "COMPLETE"
    if admin_prepare:  # TopCAT re-prepared: it holds the new preparedId
        assert hits(sim, counter) >= 1 and d["preparedId"] != old
    else:  # pollcat prepared with its own account; TopCAT still holds the forgotten one
        assert hits(sim, counter) == 0 and d["preparedId"] == old
    mail = wait_for(lambda: [m for m in sim.facility.mail_outbox if m["download_id"] == 1],
                    timeout=10, what="the mail")[0]
    if custom_value:
        assert "/target/globus/alice/alice_run42" in mail["body"]
    else:
        assert mail["body"].endswith("Your data: see the portal")


def test_admin_prepare_waits_longer_than_ordinary_calls(make_sim):
    """A large selection makes TopCAT's prepare slow (the IDS asks ICAT per item); the
    ordinary 60 s-style timeout must not cut it short."""
    sim = profile_sim(make_sim, "download-api-3.2")
    wait_status(sim.url, "RESTORING")
    old = downloads(sim.url)[1]["preparedId"]
    sim.add_fault(kind="latency", service="ids", endpoint="prepareData", seconds=1.5, count=1)
    icat = IcatSession(sim.url, auth="simple", username="pollcat", password="pollpass",
                       timeout=10)
    client = TopcatAdmin(sim.url, "LILS", icat, timeout=0.8, prepare_timeout_s=10)
    assert client.prepare(1) is True
    assert downloads(sim.url)[1]["preparedId"] != old
