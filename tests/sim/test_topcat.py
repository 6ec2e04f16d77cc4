"""The simulated TopCAT, driven over HTTP as pollcat and the TopCAT web UI drive the real one.

Each test checks an outcome a client can observe: download statuses in TopCAT, HTTP codes and
error JSON, and the mails TopCAT sends (outbox and a real SMTP server).
"""

from __future__ import annotations

import email
import email.policy
import json
import re
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

from tests.conftest import scenario

ENUM = "org.icatproject.topcat.domain.DownloadStatus."
FAST = {"poll_delay_s": 0, "poll_interval_wait_s": 0.2,
        "mail": {"bodies": {"globus": "Hi ${userName}, ${fileName} (${size}) is ready. "
                                      "Token: ${customValue}",
                            "https": "Get it at ${downloadUrl}"}}}
ALICE_INV = {"user": "simple/alice", "email": "alice@example.org",
             "items": [{"investigation": "INV-001"}]}
YASSON_DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\[UTC\]$")


def sim_scenario(**overrides: Any) -> dict[str, Any]:
    base = {"restore": {"latency_s": 0.2, "bytes_per_s": 1_000_000_000}, "topcat": FAST}
    base.update(overrides)
    return scenario(**base)


def login(sim, user: str, password: str) -> str:
    creds = {"plugin": "simple", "credentials": [{"username": user}, {"password": password}]}
    resp = requests.post(f"{sim.url}/icat/session", data={"json": json.dumps(creds)}, timeout=10)
    resp.raise_for_status()
    return resp.json()["sessionId"]


def admin_downloads(sim, sid: str, query: str | None = None) -> list[dict[str, Any]]:
    params = {"facilityName": "LILS", "sessionId": sid}
    if query is not None:
        params["queryOffset"] = query
    resp = requests.get(f"{sim.url}/topcat/admin/downloads", params=params, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def download(sim, sid: str, download_id: int) -> dict[str, Any]:
    (found,) = admin_downloads(sim, sid, f"where download.id = {download_id}")
    return found


def wait_for(check: Callable[[], Any], timeout: float = 8.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def wait_status(sim, sid: str, download_id: int, status: str) -> dict[str, Any]:
    return wait_for(lambda: (d := download(sim, sid, download_id))["status"] == status and d)


def put_status(sim, sid: str, download_id: int, value: str, **extra: str) -> requests.Response:
    return requests.put(f"{sim.url}/topcat/admin/download/{download_id}/status", timeout=10,
                        data={"facilityName": "LILS", "sessionId": sid, "value": value, **extra})


def submit_via_cart(sim, sid: str, items: str, transport: str, **extra: str) -> dict[str, Any]:
    cart = f"{sim.url}/topcat/user/cart/LILS"
    resp = requests.post(f"{cart}/cartItems", data={"sessionId": sid, "items": items}, timeout=10)
    assert resp.status_code == 200, resp.text
    form = {"sessionId": sid, "transport": transport, "fileName": "mydata", **extra}
    resp = requests.post(f"{cart}/submit", data=form, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def mails_for(sim, download_id: int) -> list[dict[str, Any]]:
    return [m for m in sim.facility.mail_outbox if m["download_id"] == download_id]


def ids_of(sim, name: str, dataset: str | None = None) -> int:
    store = sim.store
    inv = next(i for i in store.investigations.values() if i.name == name)
    if dataset is None:
        return inv.id
    return next(d for d in inv.dataset_ids if store.datasets[d].name == dataset)


# ---------------------------------------------------------------------------- general


def test_ping_version_and_unknown_path(make_sim):
    sim = make_sim(sim_scenario())
    assert requests.get(f"{sim.url}/topcat/ping", timeout=5).json() == "ok"
    assert requests.get(f"{sim.url}/topcat/version", timeout=5).json() == "3.2.0"
    resp = requests.get(f"{sim.url}/topcat/no/such/thing", timeout=5)
    assert resp.status_code == 404
    assert resp.json()["code"] == "NotFoundException" and resp.json()["status"] == 404


# ---------------------------------------------------------------------------- lifecycle


def test_https_two_level_scenario_download_completes_and_mails_once(make_sim):
    sim = make_sim(sim_scenario(downloads=[{**ALICE_INV, "transport": "https",
                                            "file_name": "alice_inv"}]))
    admin = login(sim, "pollcat", "pollpass")
    (d,) = admin_downloads(sim, admin)
    assert d["status"] in ("PREPARING", "RESTORING", "COMPLETE")
    done = wait_status(sim, admin, d["id"], "COMPLETE")
    assert done["isTwoLevel"] is True and done["preparedId"] and done["size"] > 0
    assert done["userName"] == "simple/alice" and done["fullName"] == "Alice Smith"
    assert done["downloadItems"][0]["entityType"] == "investigation"
    assert YASSON_DATE.match(done["createdAt"]) and YASSON_DATE.match(done["completedAt"])
    assert "deletedAt" not in done and done["isDeleted"] is False
    wait_for(lambda: mails_for(sim, d["id"]))
    time.sleep(0.6)  # several more StatusCheck rounds: still one mail
    (mail,) = mails_for(sim, d["id"])
    assert mail["to"] == "alice@example.org"
    assert f"/ids/getData?preparedId={done['preparedId']}&outname=alice_inv" in mail["body"]
    assert wait_for(lambda: download(sim, admin, d["id"])["isEmailSent"])


def test_globus_two_level_waits_for_the_outside_agent(make_sim):
    sim = make_sim(sim_scenario(downloads=[{**ALICE_INV, "transport": "globus",
                                            "file_name": "for_globus"}]))
    admin = login(sim, "pollcat", "pollpass")
    (d,) = admin_downloads(sim, admin)
    restoring = wait_status(sim, admin, d["id"], "RESTORING")
    assert restoring["preparedId"] and restoring["size"] > 0
    time.sleep(0.8)  # restore (0.2 s) is long done; TopCAT still never completes globus
    assert download(sim, admin, d["id"])["status"] == "RESTORING"
    assert mails_for(sim, d["id"]) == []
    # the agent's poll query finds it, then the agent sets it COMPLETE
    query = (f"where download.facilityName = 'LILS' and download.transport = 'globus' and "
             f"download.status = {ENUM}RESTORING and download.isDeleted = false "
             "order by download.id asc limit 0, 50")
    assert [x["id"] for x in admin_downloads(sim, admin, query)] == [d["id"]]
    assert put_status(sim, admin, d["id"], "COMPLETE").status_code == 200
    assert "completedAt" in download(sim, admin, d["id"])
    (mail,) = wait_for(lambda: mails_for(sim, d["id"]))
    assert mail["body"].startswith("Hi Alice Smith, for_globus (")
    assert "${customValue}" in mail["body"]  # no customValue on this path


def test_cart_submit_two_level_https_and_globus(make_sim):
    sim = make_sim(sim_scenario())
    alice = login(sim, "alice", "alicepass")
    admin = login(sim, "pollcat", "pollpass")
    ds = ids_of(sim, "INV-001", "run-42")
    https = submit_via_cart(sim, alice, f"dataset {ds}", "https")
    globus = submit_via_cart(sim, alice, f"dataset {ds}", "globus", email="")
    assert set(https) == {"facilityName", "userName", "cartItems", "downloadId"}
    assert wait_status(sim, admin, https["downloadId"], "COMPLETE")
    g = wait_status(sim, admin, globus["downloadId"], "RESTORING")
    assert g["sessionId"] == alice and "email" not in g


@pytest.mark.parametrize("transport", ["https", "globus"])
def test_single_level_submit_completes_at_once(make_sim, transport):
    sim = make_sim(sim_scenario(storage="single-level"))
    alice = login(sim, "alice", "alicepass")
    admin = login(sim, "pollcat", "pollpass")
    inv = ids_of(sim, "INV-001")
    out = submit_via_cart(sim, alice, f"investigation {inv}", transport,
                          email="alice@example.org")
    d = download(sim, admin, out["downloadId"])
    assert d["status"] == "COMPLETE" and d["isTwoLevel"] is False and d["preparedId"]
    assert "completedAt" in d
    (mail,) = wait_for(lambda: mails_for(sim, d["id"]))
    assert mail["transport"] == transport


def test_single_level_scenario_download(make_sim):
    sim = make_sim(sim_scenario(storage="single-level",
                                downloads=[{**ALICE_INV, "transport": "globus"}]))
    admin = login(sim, "pollcat", "pollpass")
    (d,) = admin_downloads(sim, admin)
    assert d["status"] == "COMPLETE" and d["transport"] == "globus"
    assert d["fileName"].startswith("LILS_")


def test_ids_500_during_prepare_data_expires_the_download(make_sim):
    sim = make_sim(sim_scenario())
    sim.add_fault(kind="error", service="ids", endpoint="prepareData", status=500, count=1)
    alice = login(sim, "alice", "alicepass")
    admin = login(sim, "pollcat", "pollpass")
    out = submit_via_cart(sim, alice, f"investigation {ids_of(sim, 'INV-001')}", "globus")
    d = wait_status(sim, admin, out["downloadId"], "EXPIRED")
    assert "preparedId" not in d
    time.sleep(0.5)
    assert download(sim, admin, d["id"])["status"] == "EXPIRED"


def test_admin_prepare_revives_an_expired_download(make_sim):
    sim = make_sim(sim_scenario())
    sim.add_fault(kind="error", service="ids", endpoint="prepareData", status=500, count=1)
    alice = login(sim, "alice", "alicepass")
    admin = login(sim, "pollcat", "pollpass")
    out = submit_via_cart(sim, alice, f"investigation {ids_of(sim, 'INV-001')}", "globus")
    wait_status(sim, admin, out["downloadId"], "EXPIRED")
    url = f"{sim.url}/topcat/admin/download/{out['downloadId']}/prepare"
    requests.put(url.replace("/prepare", "/isDeleted"), timeout=10,
                 data={"facilityName": "LILS", "sessionId": admin, "value": "true"})
    resp = requests.put(url, data={"facilityName": "LILS", "sessionId": admin}, timeout=10)
    assert resp.status_code == 200, resp.text
    d = download(sim, admin, out["downloadId"])
    # the admin session prepares but is not stored: TopCAT keeps the user's
    assert d["status"] == "RESTORING" and d["preparedId"] and d["sessionId"] == alice
    assert d["isDeleted"] is False and "deletedAt" not in d
    resp = requests.put(f"{sim.url}/topcat/admin/download/999/prepare", timeout=10,
                        data={"facilityName": "LILS", "sessionId": admin})
    assert resp.status_code == 404


# ---------------------------------------------------------------------------- admin API


def test_admin_authorisation(make_sim):
    sim = make_sim(sim_scenario())
    admin = login(sim, "pollcat", "pollpass")
    alice = login(sim, "alice", "alicepass")
    url = f"{sim.url}/topcat/admin/downloads"
    for sid in (alice, "00000000-0000-0000-0000-000000000000", "not-a-session"):
        resp = requests.get(url, params={"facilityName": "LILS", "sessionId": sid}, timeout=10)
        assert resp.status_code == 403
        assert resp.json() == {"status": 403, "code": "ForbiddenException",
                               "message": "please provide a valid facilityName and sessionId"}
    resp = requests.get(url, params={"facilityName": "NOPE", "sessionId": admin}, timeout=10)
    assert resp.status_code == 400
    assert resp.json()["message"] == "FacilityMap.getIcatUrl: unknown facility: NOPE"
    valid = f"{sim.url}/topcat/admin/isValidSession"
    assert requests.get(valid, params={"facilityName": "LILS", "sessionId": admin},
                        timeout=10).json() is True
    assert requests.get(valid, params={"facilityName": "LILS", "sessionId": alice},
                        timeout=10).json() is False
    resp = put_status(sim, alice, 1, "COMPLETE")
    assert resp.status_code == 403


def test_status_put_errors(make_sim):
    sim = make_sim(sim_scenario(downloads=[{**ALICE_INV, "transport": "globus"}]))
    admin = login(sim, "pollcat", "pollpass")
    resp = put_status(sim, admin, 999, "COMPLETE")
    assert resp.status_code == 404 and resp.json()["message"] == "could not find download"
    resp = put_status(sim, admin, 1, "FINISHED")
    assert resp.status_code == 500 and resp.json()["code"] == "InternalException"
    assert put_status(sim, admin, 1, "PAUSED").status_code == 200
    assert download(sim, admin, 1)["status"] == "PAUSED"
    # the simulator's log of admin status PUTs (for "exactly one COMPLETE") holds the accepted
    assert sim.facility.topcat.admin_status_puts == [(1, "PAUSED")]
    assert requests.get(f"{sim.url}/sim/status-puts", timeout=10).json() == [[1, "PAUSED"]]


def test_custom_value_sends_the_email_immediately_and_on_every_put(make_sim):
    sim = make_sim(sim_scenario(downloads=[{**ALICE_INV, "transport": "globus"}]))
    admin = login(sim, "pollcat", "pollpass")
    wait_status(sim, admin, 1, "RESTORING")
    resp = put_status(sim, admin, 1, "COMPLETE", customValue="tok-123")
    assert resp.status_code == 200
    (mail,) = mails_for(sim, 1)  # at once: no StatusCheck round needed
    assert mail["body"].endswith("Token: tok-123")
    assert download(sim, admin, 1)["isEmailSent"] is True
    time.sleep(0.6)
    assert len(mails_for(sim, 1)) == 1  # StatusCheck does not mail again
    # download-api 3.2 does not look at isEmailSent on this path: a retried PUT mails again
    assert put_status(sim, admin, 1, "COMPLETE", customValue="tok-123").status_code == 200
    assert len(mails_for(sim, 1)) == 2


def test_query_offset_limit_order_enums_and_deleted(make_sim):
    downloads = [{**ALICE_INV, "transport": t} for t in ("globus", "globus", "https", "globus")]
    sim = make_sim(sim_scenario(downloads=downloads))
    admin = login(sim, "pollcat", "pollpass")
    wait_for(lambda: len(admin_downloads(
        sim, admin, f"download.status = {ENUM}RESTORING and download.transport = 'globus'")) == 3)
    wait_status(sim, admin, 3, "COMPLETE")
    page = admin_downloads(sim, admin, "where download.facilityName = 'LILS' AND 1 = 1 "
                                       "order by download.id desc limit 1, 2")
    assert [d["id"] for d in page] == [3, 2]
    like = admin_downloads(sim, admin, "download.status like 'RESTOR%' order by download.id")
    assert [d["id"] for d in like] == [1, 2, 4]
    both = admin_downloads(sim, admin, "download.id in (1, 4) OR (download.transport = 'https'"
                                       " AND download.status <> " + ENUM + "EXPIRED)")
    assert sorted(d["id"] for d in both) == [1, 3, 4]
    requests.put(f"{sim.url}/topcat/admin/download/2/isDeleted", timeout=10,
                 data={"facilityName": "LILS", "sessionId": admin, "value": "true"})
    assert len(admin_downloads(sim, admin)) == 4  # soft-deleted are included by default
    live = admin_downloads(sim, admin, "download.isDeleted = false order by download.id")
    assert [d["id"] for d in live] == [1, 3, 4]
    deleted = admin_downloads(sim, admin, "download.isDeleted = true")
    assert YASSON_DATE.match(deleted[0]["deletedAt"])
    for bad in ("order by download.id", "download.status = 'RESTORING'", "download.nope = 1",
                "download.id = ", "limit 0, 10"):
        resp = requests.get(f"{sim.url}/topcat/admin/downloads", timeout=10, params={
            "facilityName": "LILS", "sessionId": admin, "queryOffset": bad})
        assert resp.status_code == 500 and resp.json()["code"] == "InternalException", bad


@pytest.mark.parametrize("fragment, floor", [
    ("download.status = x.RESTORING and download.id > 2", 2),
    ("download.id >= 3 and (download.isDeleted = false and download.id > 4)", 4),
    ("download.id > 2 or download.transport = 'https'", None),
    ("not (download.id > 2)", None),
    ("download.id > 2 and (download.id > 5 or download.transport = 'https')", 2),
    ("download.id < 2", None),
])
def test_query_offset_id_floor_is_implied_by_the_whole_condition(fragment, floor):
    """The simulator answers `download.id > N` from its id order (TopCAT's database from its
    primary key) only where the whole condition implies it."""
    from simfacility.topcat_query import ENUM_PREFIX, parse_query_offset

    query = parse_query_offset(fragment.replace("x.", ENUM_PREFIX))
    assert query.id_floor == floor


@pytest.mark.parametrize("fragment, equal", [
    ("download.status = x.RESTORING and download.isDeleted = false and 1 = 1",
     {"status": "RESTORING", "isDeleted": False}),
    ("(download.transport = 'globus' and download.id = 4)", {"transport": "globus", "id": 4}),
    ("download.transport = 'globus' or download.id = 4", {}),
    ("not download.transport = 'globus'", {}),
    ("download.transport = download.fileName and download.status <> x.EXPIRED", {}),
])
def test_query_offset_equalities_implied_by_the_whole_condition(fragment, equal):
    from simfacility.topcat_query import ENUM_PREFIX, parse_query_offset

    assert parse_query_offset(fragment.replace("x.", ENUM_PREFIX)).equal == equal


def test_query_offset_above_an_id_answers_as_a_scan_does(make_sim):
    downloads = [{**ALICE_INV, "transport": t} for t in ("globus", "https", "globus", "globus")]
    sim = make_sim(sim_scenario(downloads=downloads))
    admin = login(sim, "pollcat", "pollpass")
    for cond, ids in [("download.id > 1", [2, 3, 4]), ("download.id >= 3", [3, 4]),
                      ("download.id > 1 and download.transport = 'globus' "
                       "order by download.id desc limit 0, 1", [4]),
                      ("download.id > 4", []),
                      ("download.id > 3 or download.id = 1", [1, 4]),
                      ("download.id > 1 and download.status = " + ENUM + "EXPIRED", [])]:
        assert [d["id"] for d in admin_downloads(sim, admin, cond)] == ids, cond


# ---------------------------------------------------------------------------- user API


def test_user_downloads_and_cart(make_sim):
    sim = make_sim(sim_scenario(downloads=[{**ALICE_INV, "transport": "globus"}]))
    alice = login(sim, "alice", "alicepass")
    bob = login(sim, "bob", "bobpass")
    user = f"{sim.url}/topcat/user"
    mine = requests.get(f"{user}/downloads", timeout=10, params={
        "facilityName": "LILS", "sessionId": alice, "queryOffset": "download.isDeleted = false"})
    assert [d["id"] for d in mine.json()] == [1]
    theirs = requests.get(f"{user}/downloads", timeout=10,
                          params={"facilityName": "LILS", "sessionId": bob})
    assert theirs.json() == []
    resp = requests.get(f"{user}/downloads", timeout=10, params={
        "facilityName": "LILS", "sessionId": alice, "queryOffset": "1 = 1) or (1 = 1"})
    assert resp.status_code == 400
    resp = requests.put(f"{user}/download/1/isDeleted", timeout=10,
                        data={"facilityName": "LILS", "sessionId": bob, "value": "true"})
    assert resp.status_code == 403
    resp = requests.get(f"{user}/downloads", timeout=10,
                        params={"facilityName": "LILS", "sessionId": "bogus"})
    assert resp.status_code == 400 and resp.json()["code"] == "BadRequestException"

    cart = f"{user}/cart/LILS"
    inv, ds = ids_of(sim, "INV-001"), ids_of(sim, "INV-001", "run-43")
    body = requests.post(f"{cart}/cartItems", timeout=10,
                         data={"sessionId": alice, "items": f"dataset {ds}"}).json()
    (item,) = body["cartItems"]
    assert item["name"] == "run-43" and item["parentEntities"][0]["entityId"] == inv
    body = requests.post(f"{cart}/cartItems", timeout=10,
                         data={"sessionId": alice, "items": f"investigation {inv}"}).json()
    assert [i["entityType"] for i in body["cartItems"]] == ["investigation"]  # parent wins
    resp = requests.post(f"{cart}/submit", data={"sessionId": alice, "transport": "https"},
                         timeout=10)
    assert resp.status_code == 400 and resp.json()["message"] == "fileName is required"
    resp = requests.post(f"{cart}/submit", data={"sessionId": alice, "fileName": "x"},
                         timeout=10)
    assert resp.status_code == 400 and resp.json()["message"] == "transport is required"
    body = requests.delete(f"{cart}/cartItems", params={"sessionId": alice, "items": "*"},
                           timeout=10).json()
    assert body == {"facilityName": "LILS", "userName": "simple/alice", "cartItems": []}
    body = requests.post(f"{cart}/submit", timeout=10, data={
        "sessionId": alice, "transport": "https", "fileName": "x"}).json()
    assert "downloadId" not in body  # no cart: no download, no error


# ---------------------------------------------------------------------------- SMTP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_email_reaches_a_real_smtp_server(make_sim):
    from aiosmtpd.controller import Controller

    received: list[Any] = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd API)
            received.append(envelope)
            return "250 OK"

    port = _free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        topcat = {**FAST, "mail": {**FAST["mail"], "from": "topcat@lils.example",
                                   "smtp": {"host": "127.0.0.1", "port": port}}}
        sim = make_sim(sim_scenario(topcat=topcat, downloads=[
            {**ALICE_INV, "transport": "https", "file_name": "smtp_test"}]))
        (env,) = wait_for(lambda: received)
        assert env.rcpt_tos == ["alice@example.org"]
        assert env.mail_from == "topcat@lils.example"
        msg = email.message_from_bytes(env.content, policy=email.policy.default)
        assert msg["Subject"] == "Your LILS download smtp_test is ready"
        assert "outname=smtp_test" in msg.get_content()
        assert sim.facility.mail_outbox[0]["smtp_error"] is None
    finally:
        controller.stop()
