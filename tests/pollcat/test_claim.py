"""The claim on the target: exclusive across workers that share no state directory, with an
owner token and a lease a successor can take over, renewed while working, released at the end.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import fsspec
import pytest

from pollcat.claim import ClaimResult, acquire
from pollcat.delivery import HeldByOther, plan_delivery, transfer_unless_delivered
from pollcat.errors import DeliveryLocked
from pollcat.pipeline import Prepared
from pollcat.targetfs import open_target
from tests.conftest import scenario
from tests.support import crc_hex, delivered_files, pipeline_for, statuses, wait_status

DL = "alice/dl"


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def tfs(tmp_path):
    return open_target(fsspec.filesystem("file"), str(tmp_path / "target"))


def claim_files(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "target" / DL / ".pollcat").iterdir()
                  if p.name.startswith(".pollcat-claim"))


def test_second_worker_is_held_off_until_the_lease_expires(tmp_path, tfs):
    clock = Clock()
    first = acquire(tfs, DL, facility="LILS", download_id=1, lease_s=60, clock=clock)
    assert first.result is ClaimResult.ACQUIRED and first.generation == 0
    second = acquire(tfs, DL, facility="LILS", download_id=1, lease_s=60, clock=clock)
    assert second.result is ClaimResult.HELD_BY_OTHER
    assert second.holder is not None and second.holder.token == first.token
    first.check()  # still ours

    clock.now += 61  # the first worker died without renewing (another host: no pid check)
    record = json.loads((tmp_path / "target" / DL / ".pollcat/.pollcat-claim.0").read_text())
    record["host"] = "another-host"
    (tmp_path / "target" / DL / ".pollcat/.pollcat-claim.0").write_text(json.dumps(record))
    successor = acquire(tfs, DL, facility="LILS", download_id=1, lease_s=60, clock=clock)
    assert successor.result is ClaimResult.ACQUIRED and successor.generation == 1
    assert claim_files(tmp_path) == [".pollcat-claim.1"]  # the stale generation is gone
    with pytest.raises(DeliveryLocked) as info:
        first.check()  # the stalled owner wakes up: it must not place anything
    assert "took over" in str(info.value)


def test_release_lets_the_next_worker_in_at_once_and_keeps_the_owner(tmp_path, tfs):
    first = acquire(tfs, DL, facility="LILS", download_id=1)
    first.release()
    assert claim_files(tmp_path) == [".pollcat-claim.0"]  # still names its download
    nxt = acquire(tfs, DL, facility="LILS", download_id=1)
    assert nxt.result is ClaimResult.ACQUIRED
    other = acquire(tfs, DL, facility="LILS", download_id=2)
    assert other.result is ClaimResult.OTHER_DOWNLOAD


def test_renewing_extends_the_lease(tfs):
    clock = Clock()
    claim = acquire(tfs, DL, facility="LILS", download_id=1, lease_s=60, clock=clock)
    clock.now += 50
    claim.renew()
    clock.now += 50  # 100 s after acquiring, 50 after renewing: still held
    assert acquire(tfs, DL, facility="LILS", download_id=1, lease_s=60,
                   clock=clock).result is ClaimResult.HELD_BY_OTHER


def test_keep_alive_renews_in_the_background_and_releases(tmp_path, tfs):
    claim = acquire(tfs, DL, facility="LILS", download_id=1, lease_s=60)
    path = tmp_path / "target" / DL / ".pollcat/.pollcat-claim.0"
    before = json.loads(path.read_text())["expires_at"]
    with claim.keep_alive(every_s=0.05):
        time.sleep(0.3)
        during = json.loads(path.read_text())["expires_at"]
    assert during > before
    assert json.loads(path.read_text())["expires_at"] == 0.0


def test_a_claim_file_being_written_counts_as_held(tmp_path, tfs):
    staging = tmp_path / "target" / DL / ".pollcat"
    staging.mkdir(parents=True, mode=0o700)
    (staging / ".pollcat-claim.0").write_bytes(b"")  # its writer died between create and write
    clock = Clock(time.time())
    assert acquire(tfs, DL, facility="LILS", download_id=1, lease_s=60,
                   clock=clock).result is ClaimResult.HELD_BY_OTHER
    clock.now += 61
    assert acquire(tfs, DL, facility="LILS", download_id=1, lease_s=60,
                   clock=clock).result is ClaimResult.ACQUIRED


def test_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path, tfs):
    claim = acquire(tfs, DL, facility="LILS", download_id=1)
    path = tmp_path / "target" / DL / ".pollcat/.pollcat-claim.0"
    record = json.loads(path.read_text())
    record["pid"] = 2 ** 22 + 17  # above pid_max's default: no such process
    path.write_text(json.dumps(record))
    assert acquire(tfs, DL, facility="LILS", download_id=1).result is ClaimResult.ACQUIRED
    with pytest.raises(DeliveryLocked):
        claim.check()


def test_racing_workers_get_exactly_one_claim(tfs):
    results, barrier = [], threading.Barrier(8)

    def race():
        barrier.wait()
        results.append(acquire(tfs, DL, facility="LILS", download_id=1).result)

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(ClaimResult.ACQUIRED) == 1
    assert results.count(ClaimResult.HELD_BY_OTHER) == 7


def test_legacy_claim_of_another_download_is_respected(tmp_path, tfs):
    (tmp_path / "target" / DL).mkdir(parents=True)
    (tmp_path / "target" / DL / ".pollcat-claim").write_text("LILS 99")
    assert acquire(tfs, DL, facility="LILS", download_id=1).result is \
        ClaimResult.OTHER_DOWNLOAD
    assert acquire(tfs, DL, facility="LILS", download_id=99).result is ClaimResult.ACQUIRED


# --- two workers with different state directories, through the simulator --------------------

BIG = {"user": "simple/alice", "transport": "globus", "file_name": "big",
       "email": "alice@example.org", "items": [{"investigation": "INV-001", "dataset": "big"}]}


def _ready(pipe, download_id):
    """Check readiness with the state machine's own step until the IDS has the data."""
    d = pipe.topcat.get(download_id)
    prepared, deadline = None, time.monotonic() + 10
    while True:
        prepared = pipe.check(d, prepared)
        assert isinstance(prepared, Prepared), prepared
        if prepared.ready:
            return d, prepared.prepared_id
        assert time.monotonic() < deadline, "not restored in 10 s"
        time.sleep(0.1)


def test_two_workers_one_stalled_mid_file_exactly_one_writes(make_sim, tmp_path):
    scn = scenario(downloads=[BIG])
    scn["investigations"][0]["datasets"].append(
        {"name": "big", "datafiles": [{"name": "a.raw", "size": 3 << 20},
                                      {"name": "b.raw", "size": 2 << 20}]})
    sim = make_sim(scn)
    wait_status(sim.url, "RESTORING")
    a_raw = next(df for df in sim.store.datafiles.values() if df.name == "a.raw")
    # worker A's a.raw stalls after 1 MiB for 2 s: it is mid-file while worker B arrives
    sim.add_fault(kind="stall", service="ids", endpoint="getData", after_bytes=1 << 20,
                  seconds=2, count=1, params={"datafileIds": str(a_raw.id)})
    workers = [pipeline_for(sim, tmp_path, state_dir=tmp_path / f"state-{n}") for n in "AB"]
    root = tmp_path / "target/globus"
    (download_id,) = [1]
    results: dict[str, object] = {}

    def run_a():
        pipe = workers[0]
        d, pid = _ready(pipe, download_id)
        plan = plan_delivery(d, pipe.cfg.routes["globus"], "LILS", pipe.clients, pid)
        results["A-plan"] = plan
        results["A"] = transfer_unless_delivered(plan, pid, pipe.clients, "LILS", 0, None)

    thread = threading.Thread(target=run_a)
    thread.start()
    deadline = time.monotonic() + 15
    while not list(root.rglob("*.pollcat-part")) and time.monotonic() < deadline:
        time.sleep(0.05)
    pipe_b = workers[1]
    d, pid = _ready(pipe_b, download_id)
    held = plan_delivery(d, pipe_b.cfg.routes["globus"], "LILS", pipe_b.clients, pid)
    assert isinstance(held, HeldByOther), held
    assert "another worker" in held.reason and "big" in held.path
    parts_while_held = sorted(p.name for p in root.rglob("*.pollcat-part"))
    assert parts_while_held  # A's part file is untouched by B
    thread.join(timeout=60)
    assert len(results["A"]) == 2
    files = delivered_files(root)
    assert sorted(files) == ["alice/big/INV-001/1/big/a.raw", "alice/big/INV-001/1/big/b.raw"]
    for rel, path in files.items():
        df = next(x for x in sim.store.datafiles.values() if x.name == rel.rsplit("/", 1)[1])
        assert path.stat().st_size == df.size
        assert int(crc_hex(path), 16) == int(df.checksum, 16)
    assert (root / "alice/big/pollcat-manifest.json").is_file()
    assert not list(root.rglob("*.pollcat-part"))
    # A released the claim: B may now run, and finds everything delivered (copies nothing)
    plan = plan_delivery(d, pipe_b.cfg.routes["globus"], "LILS", pipe_b.clients, pid)
    assert not isinstance(plan, HeldByOther)
    again = transfer_unless_delivered(plan, pid, pipe_b.clients, "LILS", 0, None)
    assert all(r.skipped for r in again)
    assert {p.name: p.stat().st_ino for p in files.values()} == {
        p.name: p.stat().st_ino for p in delivered_files(root).values()}


def test_a_different_download_with_the_same_name_gets_its_own_directory(tmp_path, tfs):
    from pollcat.config import TargetConfig
    from pollcat.delivery import claim_download_dir
    from pollcat.topcat import Download

    target = TargetConfig(url=f"file://{tmp_path / 'target'}")

    def download(i: int) -> Download:
        return Download(id=i, facility_name="LILS", file_name="run", user_name="simple/alice",
                        transport="globus", status="RESTORING", prepared_id="p")

    fields = {"user": "alice", "download": "run", "download_id": "1", "facility": "LILS",
              "transport": "globus"}
    first = claim_download_dir(download(1), target, "LILS", tfs, dict(fields))
    second = claim_download_dir(download(2), target, "LILS", tfs, dict(fields, download_id="2"))
    assert (first.dir, second.dir) == ("alice/run", "alice/run_2")
    assert first.result is second.result is ClaimResult.ACQUIRED
    again = claim_download_dir(download(2), target, "LILS", tfs, dict(fields, download_id="2"))
    assert again.dir == "alice/run_2"  # deterministic on every run


def test_two_processes_with_different_state_dirs(make_sim, tmp_path):
    """A `pollcat sweep` process (state dir A) stalls mid-file; this process (state dir B, no
    shared ledger or lock) finds the claim on the target held and writes nothing; A finishes
    with every file, and TopCAT gets COMPLETE once."""
    import subprocess
    import sys

    scn = scenario(downloads=[BIG])
    scn["investigations"][0]["datasets"].append(
        {"name": "big", "datafiles": [{"name": "a.raw", "size": 6 << 20},
                                      {"name": "b.raw", "size": 1 << 20}]})
    sim = make_sim(scn)
    wait_status(sim.url, "RESTORING")
    a_raw = next(df for df in sim.store.datafiles.values() if df.name == "a.raw")
    sim.add_fault(kind="stall", service="ids", endpoint="getData", after_bytes=2 << 20,
                  seconds=8,  # long enough for B's checks, even on a busy machine
                  count=1, params={"datafileIds": str(a_raw.id)})
    root = tmp_path / "target/globus"
    env = dict(os.environ, POLLCAT_PASSWORD="pollpass")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pollcat.cli", "sweep", "--icat-url", sim.url, "--ids-url",
         sim.url, "--topcat-url", sim.url, "--facility-name", "LILS", "--username", "pollcat",
         "--route", f"globus=file://{root}", "--state-dir", str(tmp_path / "state-A"),
         "--poll-budget-seconds", "10", "--timeout-seconds", "60"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(
                p.stat().st_size >= 2 << 20 for p in root.rglob("*.pollcat-part")):
            time.sleep(0.05)
        parts = {p: p.stat().st_size for p in root.rglob("*.pollcat-part")}
        assert any(size >= 2 << 20 for size in parts.values()), "A is not mid-file"
        pipe_b = pipeline_for(sim, tmp_path, state_dir=tmp_path / "state-B")
        d, pid = _ready(pipe_b, 1)
        held = plan_delivery(d, pipe_b.cfg.routes["globus"], "LILS", pipe_b.clients, pid)
        assert isinstance(held, HeldByOther), held
        # B deleted nothing of A's: the stalled part is still there (a smaller part may have
        # been placed by A meanwhile, which is A's own doing)
        stalled = [p for p, size in parts.items() if size >= 2 << 20]
        assert stalled and all(p.exists() for p in stalled)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    files = delivered_files(root)
    assert sorted(files) == ["alice/big/INV-001/1/big/a.raw", "alice/big/INV-001/1/big/b.raw"]
    for rel, path in files.items():
        df = next(x for x in sim.store.datafiles.values() if x.name == rel.rsplit("/", 1)[1])
        assert path.stat().st_size == df.size and int(crc_hex(path), 16) == int(df.checksum, 16)
    assert not list(root.rglob("*.pollcat-part"))
    assert statuses(sim.url) == {1: "COMPLETE"}


def test_a_successor_is_seen_before_the_next_placement_from_a_few_lstats(tmp_path):
    """The check before each placement lstats our generation and the next two; a successor's
    new generation is seen at once, even before it removed ours, and the full look still
    names who took over."""
    from pollcat.claim import CLAIM_PREFIX, acquire
    from pollcat.errors import DeliveryLocked
    from pollcat.targetfs import LocalTarget

    tfs = LocalTarget(str(tmp_path / "root"))
    mine = acquire(tfs, "alice/dl", facility="LILS", download_id=3)
    looked: list[str] = []
    real = tfs.list_names
    tfs.list_names = lambda rel: looked.append(rel) or real(rel)  # type: ignore[method-assign]
    for _ in range(5):
        mine.check()
    assert looked == []  # nothing changed: no listing, no read of the record
    staging = tmp_path / "root/alice/dl/.pollcat"
    body = (staging / f"{CLAIM_PREFIX}{mine.generation}").read_text().replace(
        mine.token, "f" * 32)
    (staging / f"{CLAIM_PREFIX}{mine.generation + 1}").write_text(body)  # not yet removed ours
    with pytest.raises(DeliveryLocked, match="another worker took over"):
        mine.check()
    assert looked == ["alice/dl/.pollcat"]
