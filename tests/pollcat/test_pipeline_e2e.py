"""The delivery pipeline end to end against the simulated facility (no Prefect)."""

from __future__ import annotations

import json
import threading

import pytest

from pollcat.manifest import MANIFEST_NAME
from pollcat.state import StateStore
from tests.conftest import scenario
from tests.support import (
    crc_hex,
    delivered_files,
    downloads,
    pipeline_for,
    statuses,
    sweep_until_complete,
    wait_for,
    wait_status,
)

ALICE_RUN42 = {"user": "simple/alice", "transport": "globus", "file_name": "alice_run42",
               "email": "alice@example.org",
               "items": [{"investigation": "INV-001", "dataset": "run-42"}]}
BOB_ALL = {"user": "simple/bob", "transport": "globus", "file_name": "bob_all",
           "email": "bob@example.org", "items": [{"investigation": "INV-002"}]}
ALICE_SCARF = {"user": "simple/alice", "transport": "scarf", "file_name": "alice_43",
               "email": "alice@example.org",
               "items": [{"investigation": "INV-001", "dataset": "run-43"}]}


def _expected(sim, names: list[str]) -> dict[str, str]:
    """ICAT's checksum for each named datafile."""
    return {df.name: df.checksum for df in sim.store.datafiles.values() if df.name in names}


def _check_delivery(root, sim, expected_rel: dict[str, str]) -> None:
    files = delivered_files(root)
    assert sorted(files) == sorted(expected_rel), files
    by_name = {df.name: df for df in sim.store.datafiles.values()}
    for rel, name in expected_rel.items():
        df = by_name[name]
        assert files[rel].stat().st_size == df.size
        assert int(crc_hex(files[rel]), 16) == int(df.checksum, 16)
    assert not list(root.rglob("*.pollcat-part"))


def test_two_level_direct_end_to_end(make_sim, tmp_path):
    sim = make_sim(scenario(downloads=[ALICE_RUN42, BOB_ALL, ALICE_SCARF]))
    pipe = pipeline_for(sim, tmp_path, transports=("globus", "scarf"))
    assert set(statuses(sim.url).values()) <= {"PREPARING", "RESTORING"}
    sweep_until_complete(pipe, sim.url)
    target = tmp_path / "target"
    _check_delivery(target / "globus", sim, {
        "alice/alice_run42/INV-001/1/run-42/scan_0001.nxs": "scan_0001.nxs",
        "alice/alice_run42/INV-001/1/run-42/notes/readme.txt": "notes/readme.txt",
        "bob/bob_all/INV-002/7/calib/c.dat": "c.dat"})
    _check_delivery(target / "scarf", sim, {
        "alice/alice_43/INV-001/1/run-43/scan_0002.nxs": "scan_0002.nxs"})
    manifest = json.loads((target / "globus/alice/alice_run42" / MANIFEST_NAME).read_text())
    assert sorted(f["path"] for f in manifest["files"]) == [
        "INV-001/1/run-42/notes/readme.txt", "INV-001/1/run-42/scan_0001.nxs"]
    # TopCAT mailed each user exactly once, and a rerun changes nothing
    mails = wait_for(lambda: len(sim.facility.mail_outbox) == 3 and sim.facility.mail_outbox,
                     what="three mails")
    assert sorted(m["download_id"] for m in mails) == sorted(statuses(sim.url))
    before = downloads(sim.url)
    assert pipe.sweep() == []
    assert downloads(sim.url) == before
    assert len(sim.facility.mail_outbox) == len(mails)


def test_single_level_delivers_completed_downloads_once(make_sim, tmp_path):
    sim = make_sim(scenario(storage="single-level", downloads=[ALICE_RUN42]))
    st = statuses(sim.url)
    assert list(st.values()) == ["COMPLETE"]  # TopCAT completed it at submit time
    pipe = pipeline_for(sim, tmp_path)
    out = pipe.sweep()
    assert [o.outcome for o in out] == ["completed"]
    _check_delivery(tmp_path / "target/globus", sim, {
        "alice/alice_run42/INV-001/1/run-42/scan_0001.nxs": "scan_0001.nxs",
        "alice/alice_run42/INV-001/1/run-42/notes/readme.txt": "notes/readme.txt"})
    assert pipe.sweep() == []  # the ledger remembers


@pytest.mark.parametrize("source", ["prepared-zip", "storage"])
def test_other_sources(make_sim, tmp_path, source):
    sim = make_sim(scenario(downloads=[ALICE_RUN42]))
    extra = {"storage_url": f"file://{sim.facility.data_dir}"} if source == "storage" else {}
    pipe = pipeline_for(sim, tmp_path, source=source, **extra)
    sweep_until_complete(pipe, sim.url)
    root = tmp_path / "target/globus"
    _check_delivery(root, sim, {
        "alice/alice_run42/INV-001/1/run-42/scan_0001.nxs": "scan_0001.nxs",
        "alice/alice_run42/INV-001/1/run-42/notes/readme.txt": "notes/readme.txt"})
    if source == "storage":  # same filesystem: hard links, not copies
        scan = root / "alice/alice_run42/INV-001/1/run-42/scan_0001.nxs"
        assert scan.stat().st_nlink == 2


def test_unsafe_datafile_name_expires_only_that_download(make_sim, tmp_path):
    scn = scenario(downloads=[ALICE_RUN42, BOB_ALL])
    scn["investigations"][1]["datasets"][0]["datafiles"].append(
        {"name": "../../../etc/evil", "content": "x"})
    sim = make_sim(scn)
    wait_status(sim.url, "RESTORING")
    pipe = pipeline_for(sim, tmp_path)
    for _ in range(6):
        outcomes = {o.download_id: o for o in pipe.sweep()}
        if any(o.outcome == "expired" for o in outcomes.values()) and \
                "COMPLETE" in statuses(sim.url).values():
            break
    st = statuses(sim.url)
    alice_id, bob_id = sorted(st)
    assert st == {alice_id: "COMPLETE", bob_id: "EXPIRED"}
    rec = StateStore(tmp_path / "state", "LILS").get(bob_id)
    assert f"download {bob_id}" in rec.reason and "etc/evil" in rec.reason
    assert not (tmp_path / "etc").exists() and not (tmp_path / "target/etc").exists()
    assert not (tmp_path / "target/globus/bob").exists() or not delivered_files(
        tmp_path / "target/globus/bob")


def test_broken_connection_resumes_with_range(make_sim, tmp_path):
    sim = make_sim(scenario(downloads=[ALICE_RUN42]))
    scan = next(df for df in sim.store.datafiles.values() if df.name == "scan_0001.nxs")
    sim.add_fault(kind="reset", service="ids", endpoint="getData", after_bytes=300_000,
                  count=1, params={"datafileIds": str(scan.id)})  # the 1 MiB file, not readme
    pipe = pipeline_for(sim, tmp_path)
    history = sweep_until_complete(pipe, sim.url)
    log = sim.facility.faults.log
    assert [e.get("kind") for e in log] == ["reset"]
    done = [o for sweep in history for o in sweep if o.outcome == "completed"]
    assert [o.bytes for o in done] == [scan.size + 5]  # resumed in place: nothing fetched twice
    _check_delivery(tmp_path / "target/globus", sim, {
        "alice/alice_run42/INV-001/1/run-42/scan_0001.nxs": "scan_0001.nxs",
        "alice/alice_run42/INV-001/1/run-42/notes/readme.txt": "notes/readme.txt"})


def test_reprepare_when_the_ids_forgot_the_prepared_id(make_sim, tmp_path):
    sim = make_sim(scenario(downloads=[ALICE_RUN42]))
    wait_status(sim.url, "RESTORING")
    old = next(iter(downloads(sim.url).values()))["preparedId"]
    sim.add_fault(kind="forget_prepared", prepared_id=old)
    pipe = pipeline_for(sim, tmp_path)
    sweep_until_complete(pipe, sim.url)
    assert next(iter(downloads(sim.url).values()))["preparedId"] != old
    assert len(delivered_files(tmp_path / "target/globus")) == 2


def test_reset_after_restore_failure(make_sim, tmp_path):
    scn = scenario(downloads=[ALICE_RUN42])
    scn["faults"] = [{"kind": "fail_restore", "count": 1}]
    sim = make_sim(scn)
    pipe = pipeline_for(sim, tmp_path)
    history = sweep_until_complete(pipe, sim.url)
    ledger = StateStore(tmp_path / "state", "LILS").get(next(iter(statuses(sim.url))))
    assert ledger.restore_failures == 1
    assert "Restore failed" in ledger.last_error
    # the reset restore finishes within the same sweep's poll deadline
    assert [o.outcome for o in history[-1]] == ["completed"]


def test_overlapping_sweeps_deliver_once(make_sim, tmp_path):
    sim = make_sim(scenario(downloads=[ALICE_RUN42, BOB_ALL]))
    wait_status(sim.url, "RESTORING")
    sim.add_fault(kind="latency", service="ids", endpoint="getData", seconds=0.3)
    pipes = [pipeline_for(sim, tmp_path) for _ in range(3)]  # 3 workers, one state dir
    results: list = []
    threads = [threading.Thread(target=lambda p=p: results.append(p.sweep())) for p in pipes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    outcomes = [o.outcome for r in results for o in r]
    assert outcomes.count("completed") + outcomes.count("waiting") >= 2
    sweep_until_complete(pipes[0], sim.url)
    assert len(delivered_files(tmp_path / "target/globus")) == 3
    # every sweep has returned (the threads are joined): TopCAT took one COMPLETE per download
    puts = sim.facility.topcat.admin_status_puts
    assert sorted(i for i, status in puts if status == "COMPLETE") == sorted(statuses(sim.url)), \
        puts
    wait_for(lambda: len(sim.facility.mail_outbox) >= 2, what="two mails")
    mails = [m["download_id"] for m in sim.facility.mail_outbox]
    assert sorted(mails) == sorted(set(mails)) and len(mails) == 2


def test_lock_refuses_a_second_holder(tmp_path):
    store = StateStore(tmp_path, "LILS")
    with store.lock(7) as first:
        assert first
        with store.lock(7) as second:
            assert not second
    with store.lock(7) as again:  # released
        assert again


