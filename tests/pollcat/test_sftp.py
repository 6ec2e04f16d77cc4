"""Delivery to an SFTP target (sshfs) against a real OpenSSH sshd on 127.0.0.1.

The sshd is local, so what pollcat writes through `sftp://127.0.0.1:<port>/<tmp>` lands on this
machine's disk under the test's tmp dir, where it is checked byte for byte. Skipped when sshd is not
installed (`.ci/run` installs it).
"""

from __future__ import annotations

import json
import os
import pwd
from collections.abc import Iterator

import pytest

from pollcat.manifest import MANIFEST_NAME
from pollcat.state import StateStore
from tests.conftest import scenario
from tests.sshd import SshServer, running_sshd
from tests.support import (
    crc_hex,
    delivered_files,
    downloads,
    pipeline_for,
    statuses,
    sweep_until_complete,
    wait_status,
)

pytest.importorskip("sshfs", reason="SFTP targets need the [sftp] extra (sshfs)")
pytestmark = pytest.mark.sshd

ALICE_RUN42 = {"user": "simple/alice", "transport": "globus", "file_name": "alice_run42",
               "email": "alice@example.org",
               "items": [{"investigation": "INV-001", "dataset": "run-42"}]}
BOB_ALL = {"user": "simple/bob", "transport": "globus", "file_name": "bob_all",
           "email": "bob@example.org", "items": [{"investigation": "INV-002"}]}
ALICE_FILES = {"alice/alice_run42/INV-001/1/run-42/scan_0001.nxs": "scan_0001.nxs",
               "alice/alice_run42/INV-001/1/run-42/notes/readme.txt": "notes/readme.txt"}
SCAN_SIZE = 1048576 + 17


@pytest.fixture
def sftp() -> Iterator[SshServer]:
    with running_sshd() as server:
        yield server


def _datafile(sim, name: str):
    return next(df for df in sim.store.datafiles.values() if df.name == name)


def _check_delivery(root, sim, expected_rel: dict[str, str]) -> None:
    """Exactly these files under `root`, each with ICAT's size and CRC32, no part files left."""
    files = delivered_files(root)
    assert sorted(files) == sorted(expected_rel), files
    for rel, name in expected_rel.items():
        df = _datafile(sim, name)
        assert files[rel].stat().st_size == df.size
        assert int(crc_hex(files[rel]), 16) == int(df.checksum, 16)
    assert not list(root.rglob("*.pollcat-part"))
    # nothing of pollcat's but the manifest after COMPLETE: claim and staging dir are gone
    assert not list(root.rglob(".pollcat")) and not list(root.rglob(".pollcat-claim*"))


def _stamps(root) -> dict[str, tuple[int, int]]:
    return {rel: (p.stat().st_ino, p.stat().st_mtime_ns)
            for rel, p in delivered_files(root).items()}


def test_sftp_delivery_end_to_end(make_sim, tmp_path, sftp):
    sim = make_sim(scenario(downloads=[ALICE_RUN42, BOB_ALL]))
    root = tmp_path / "target"
    pipe = pipeline_for(sim, tmp_path, target_url=sftp.url(root),
                        storage_options=sftp.storage_options())
    sweep_until_complete(pipe, sim.url)
    assert set(statuses(sim.url).values()) == {"COMPLETE"}
    expected = dict(ALICE_FILES, **{"bob/bob_all/INV-002/7/calib/c.dat": "c.dat"})
    _check_delivery(root / "globus", sim, expected)
    manifest = json.loads((root / "globus/alice/alice_run42" / MANIFEST_NAME).read_text())
    by_path = {f["path"]: f for f in manifest["files"]}
    assert sorted(by_path) == ["INV-001/1/run-42/notes/readme.txt",
                               "INV-001/1/run-42/scan_0001.nxs"]
    scan = _datafile(sim, "scan_0001.nxs")
    assert int(by_path["INV-001/1/run-42/scan_0001.nxs"]["crc32"], 16) == int(scan.checksum, 16)
    assert manifest["totals"] == {"files": 2, "bytes": SCAN_SIZE + 5}
    assert (root / "globus/bob/bob_all" / MANIFEST_NAME).is_file()

    # A rerun copies nothing: the sweep finds nothing to do, and a worker without the ledger
    # that delivers both again reads the manifests over SFTP and leaves every file alone.
    before = _stamps(root / "globus")
    assert pipe.sweep() == []
    fresh = pipeline_for(sim, tmp_path, target_url=sftp.url(root), state_dir=tmp_path / "s2",
                         storage_options=sftp.storage_options())
    for download_id, row in downloads(sim.url).items():
        out = fresh.deliver(fresh.topcat.get(download_id), row["preparedId"])
        assert (out.outcome, out.bytes, out.skipped_files) == ("completed", 0, out.files)
    assert _stamps(root / "globus") == before

    # Without the manifest every file is re-verified over SFTP: the intact one is kept, a
    # corrupted one (same size) is fetched again and renamed over the wrong one.
    alice = root / "globus/alice/alice_run42"
    (alice / MANIFEST_NAME).unlink()
    scan_path = alice / "INV-001/1/run-42/scan_0001.nxs"
    with open(scan_path, "r+b") as fh:
        fh.write(b"\0" * 16)
    alice_id = next(i for i, d in downloads(sim.url).items() if d["fileName"] == "alice_run42")
    fresh.forget(alice_id)  # as the operator's `force=true` does
    out = fresh.deliver(fresh.topcat.get(alice_id), downloads(sim.url)[alice_id]["preparedId"])
    assert (out.outcome, out.bytes, out.skipped_files) == ("completed", SCAN_SIZE, 1)
    _check_delivery(root / "globus", sim, expected)
    assert (alice / MANIFEST_NAME).is_file()


def test_sftp_resumes_after_a_broken_ids_connection(make_sim, tmp_path, sftp):
    sim = make_sim(scenario(downloads=[ALICE_RUN42]))
    scan = _datafile(sim, "scan_0001.nxs")
    sim.add_fault(kind="reset", service="ids", endpoint="getData", after_bytes=300_000,
                  count=1, params={"datafileIds": str(scan.id)})
    root = tmp_path / "target"
    pipe = pipeline_for(sim, tmp_path, target_url=sftp.url(root),
                        storage_options=sftp.storage_options(verify_host=True))  # pinned key
    history = sweep_until_complete(pipe, sim.url)
    assert [e["kind"] for e in sim.facility.faults.log] == ["reset"]
    done = [o for sweep in history for o in sweep if o.outcome == "completed"]
    assert len(done) == 1
    assert done[0].bytes == SCAN_SIZE + 5  # continued with Range: no byte fetched twice
    _check_delivery(root / "globus", sim, ALICE_FILES)


def test_sftp_continues_a_part_file_left_by_a_crashed_run(make_sim, tmp_path, sftp):
    sim = make_sim(scenario(downloads=[ALICE_RUN42]))
    scan = _datafile(sim, "scan_0001.nxs")
    root = tmp_path / "target"
    staging = root / "globus/alice/alice_run42/.pollcat"  # as pollcat makes it: 0700
    staging.parent.mkdir(parents=True)
    staging.mkdir(mode=0o700)
    part = staging / f"{scan.id}.pollcat-part"  # named by the datafile id
    part.write_bytes(b"".join(scan.iter_bytes())[:300_000])
    pipe = pipeline_for(sim, tmp_path, target_url=sftp.url(root),
                        storage_options=sftp.storage_options())
    history = sweep_until_complete(pipe, sim.url)
    done = [o for sweep in history for o in sweep if o.outcome == "completed"]
    assert done[0].bytes == SCAN_SIZE - 300_000 + 5  # appended ("ab") to the part file
    _check_delivery(root / "globus", sim, ALICE_FILES)


def _unprivileged_user(sftp: SshServer, tmp_path) -> tuple[str, dict]:
    """`nobody` logs in; the target is in a root-owned 0755 directory it can read, not write."""
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' account to log in as")
    if os.geteuid() != 0:
        pytest.skip("needs root to let another account log in")
    sftp.authorize("nobody")
    readonly = sftp.dir / "readonly"
    readonly.mkdir(mode=0o755)
    return sftp.url(readonly), sftp.storage_options("nobody")


def _under_a_regular_file(sftp: SshServer, tmp_path) -> tuple[str, dict]:
    """The target root's parent is a file: no account can create the root."""
    (tmp_path / "afile").write_text("not a directory")
    return sftp.url(tmp_path / "afile" / "target"), sftp.storage_options()


@pytest.mark.parametrize(("setup", "why"), [
    (_unprivileged_user, "Permission denied"),
    (_under_a_regular_file, "is not a directory"),
], ids=["no-write-permission", "under-a-regular-file"])
def test_sftp_refusing_target_expires_the_download(make_sim, tmp_path, sftp, setup, why):
    url, options = setup(sftp, tmp_path)
    sim = make_sim(scenario(downloads=[ALICE_RUN42]))
    wait_status(sim.url, "RESTORING")
    pipe = pipeline_for(sim, tmp_path, target_url=url, storage_options=options)
    (download_id,) = statuses(sim.url)
    outcomes = []
    for _ in range(5):
        outcomes = pipe.sweep()
        if outcomes and outcomes[0].outcome != "waiting":
            break
    assert [o.outcome for o in outcomes] == ["expired"], outcomes
    assert statuses(sim.url) == {download_id: "EXPIRED"}
    reason = StateStore(tmp_path / "state", "LILS").get(download_id).reason
    assert reason.startswith(f"download {download_id}: target refused"), reason
    assert why in reason, reason
    assert outcomes[0].reason == reason


def test_a_restarted_sshd_mid_transfer_reconnects_within_the_sweep(make_sim, tmp_path, sftp):
    """fsspec cached the SSH filesystem, so a dropped connection used to fail the rest of the
    sweep; now the delivery reconnects and continues from its part files in the same sweep."""
    import threading
    import time

    scn = scenario(downloads=[ALICE_RUN42])
    scn["investigations"][0]["datasets"][0]["datafiles"][0]["size"] = 24 << 20
    sim = make_sim(scn)
    wait_status(sim.url, "RESTORING")
    big = _datafile(sim, "scan_0001.nxs")
    # slow the big file's stream so the restart lands mid-transfer
    sim.add_fault(kind="stall", service="ids", endpoint="getData", after_bytes=8 << 20,
                  seconds=1.5, count=1, params={"datafileIds": str(big.id)})
    root = tmp_path / "sftp-root"
    root.mkdir()
    pipe = pipeline_for(sim, tmp_path, target_url=sftp.url(root),
                        storage_options=sftp.storage_options())

    def restart_when_writing() -> None:
        deadline = time.monotonic() + 30
        while not list(root.rglob("*.pollcat-part")) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        sftp.restart()

    restarter = threading.Thread(target=restart_when_writing)
    restarter.start()
    (out,) = pipe.sweep(budget_s=5)
    restarter.join()
    assert out.outcome == "completed", out  # in this same sweep
    assert statuses(sim.url) == {1: "COMPLETE"}
    scan = root / "globus/alice/alice_run42/INV-001/1/run-42/scan_0001.nxs"
    assert scan.stat().st_size == big.size and int(crc_hex(scan), 16) == int(big.checksum, 16)
    assert not list(root.rglob("*.pollcat-part"))
