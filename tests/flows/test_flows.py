"""The Prefect flows on a real (test) Prefect server against the simulated facility."""

from __future__ import annotations

import pytest

from blocks import DeliveryTarget, PollcatFacility
from flows.deliver import deliver_download
from flows.sweep import sweep
from tests.conftest import scenario
from tests.support import delivered_files, statuses

ALICE = {"user": "simple/alice", "transport": "globus", "file_name": "alice_run42",
         "email": "alice@example.org", "items": [{"investigation": "INV-001", "dataset": "run-42"}]}
BOB = {"user": "simple/bob", "transport": "scarf", "file_name": "bob_all",
       "email": "bob@example.org", "items": [{"investigation": "INV-002"}]}

pytestmark = pytest.mark.prefect


def _blocks(sim, tmp_path, name: str) -> None:
    for t in ("globus", "scarf"):
        DeliveryTarget(url=f"file://{tmp_path / 'out' / t}",
                       storage_options={"auto_mkdir": True},
                       custom_value="Your data: {path}").save(f"{name}-{t}", overwrite=True)
    PollcatFacility(facility_name="LILS", icat_url=sim.url, ids_url=sim.url,
                    topcat_url=sim.url, username="pollcat", password="pollpass",
                    routes={"globus": f"{name}-globus", "scarf": f"{name}-scarf"},
                    state_dir=str(tmp_path / "state"), poll_budget_seconds=5,
                    timeout_seconds=10).save(name, overwrite=True)


def test_sweep_flow_delivers_isolates_and_reports(make_sim, tmp_path):
    scn = scenario(downloads=[ALICE, BOB], topcat={
        "poll_delay_s": 0, "poll_interval_wait_s": 0.2,
        "mail": {"bodies": {"globus": "Dear ${userName}: ${customValue}"}}})
    scn["investigations"][1]["datasets"][0]["datafiles"].append(
        {"name": "bad\x01name", "content": "x"})  # makes bob's download fail permanently
    sim = make_sim(scn)
    _blocks(sim, tmp_path, "flowtest")
    for _ in range(5):
        rows = sweep(facility="flowtest")
        st = statuses(sim.url)
        if "EXPIRED" in st.values() and "COMPLETE" in st.values():
            break
    alice_id, bob_id = sorted(st)
    assert st == {alice_id: "COMPLETE", bob_id: "EXPIRED"}
    assert len(delivered_files(tmp_path / "out/globus")) == 2
    mail = [m for m in sim.facility.mail_outbox if m["download_id"] == alice_id]
    assert len(mail) == 1 and mail[0]["body"].startswith("Dear Alice Smith: Your data: file://")
    assert isinstance(rows, list)

    from prefect.client.orchestration import get_client
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def latest():
        async with get_client() as client:
            return await client.read_latest_artifacts()

    arts = [a for a in run_coro_as_sync(latest()) if a.key == "pollcat-sweep-lils"]
    assert arts and arts[0].type == "table"


def test_deliver_flow_by_id_and_masked_secrets(make_sim, tmp_path):
    sim = make_sim(scenario(downloads=[ALICE]))
    _blocks(sim, tmp_path, "bytest")
    (download_id,) = statuses(sim.url)
    row = None
    for _ in range(5):
        row = deliver_download(download_id=download_id, facility="bytest", poll_budget_s=5)
        if row["outcome"] == "completed":
            break
    assert row["outcome"] == "completed" and row["files"] == 2
    assert statuses(sim.url)[download_id] == "COMPLETE"

    from prefect.client.orchestration import get_client
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def doc():
        async with get_client() as client:
            return await client.read_block_document_by_name("bytest", "pollcat-facility",
                                                             include_secrets=False)

    data = run_coro_as_sync(doc()).data
    assert data["password"] != "pollpass" and "pollpass" not in str(data)
