"""Scale-out proof: one Prefect server on PostgreSQL, worker "hosts" that share nothing but the
database, the server and the target, and the sweep dispatching one deliver run per download.

Each worker stands in for its own host: its own working directory, TMPDIR, PREFECT_HOME and
state directory. The ledger is a PostgreSQL database (the facility block's `ledger_url`), the
Prefect server's database another one on the same PostgreSQL server, the simulated facility
runs in this process (so the test reads its stream gauge and mail outbox directly).

- `test_three_hosts_deliver_every_download_once`: 54 downloads in three batches of 18, the first
  with one worker, the second with two, the third with three (the throughput figures of
  docs/scaling-out.md); the second batch is dispatched by two sweep hosts at once. Every
  download is delivered exactly once (one deliver run, one getData stream per file, one e-mail),
  verified against ICAT's size and CRC32, and the per-IDS limit holds (the simulated IDS's peak
  of concurrent getData streams never exceeds it).
- `test_killed_host_is_taken_over_from_the_part_file`: `kill -9` of a worker host mid-transfer;
  bootstrap's heartbeat automation crashes its run, the next sweep dispatches a new attempt,
  another host continues from the part file (the IDS sees a Range request) once the ledger
  lease has expired, and the dead host's concurrency slot comes back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from pollcat.sources import ids_limit_name
from simfacility.server import RunningFacility, running_facility
from tests.conftest import scenario
from tests.postgres import running_postgres
from tests.prefect_server.server import SERVER_ENV, PrefectServer, Process
from tests.support import crc_hex, delivered_files, login, statuses

pytestmark = [pytest.mark.prefect, pytest.mark.slow, pytest.mark.timeout(480)]

BLOCK = "lils-scale"
FACILITY = "LILS"
BATCH = 18
BATCHES = 3
FILES_PER_DOWNLOAD = 2
FILE_SIZE = 2_000_000
IDS_LIMIT = 2
WRITER_LIMIT = 6
WORKER_LIMIT = 4
BIG_SIZE = 160 * 1024 * 1024
STALL_AT = 48 * 1024 * 1024
# every getData body pauses 1 s after its first MB: streams overlap as they do with real
# file sizes, so the IDS limit is actually contended
SLOW_STREAMS = {"kind": "stall", "service": "ids", "endpoint": "getData",
                "after_bytes": 1_000_000, "seconds": 1.0}
LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"
MEASURED: dict[str, str] = {}
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


def _scenario() -> dict:
    many = [{"name": f"ds-{i:02d}", "datafiles": [
        {"name": f"f{i:02d}_{k}.dat", "size": FILE_SIZE + 1000 * i + k}
        for k in range(FILES_PER_DOWNLOAD)]} for i in range(BATCH * BATCHES)]
    return scenario(
        restore={"latency_s": 0.3, "bytes_per_s": 2_000_000_000},
        investigations=[
            {"name": "INV-001", "visit_id": "1", "users": ["simple/alice"], "datasets": many},
            {"name": "INV-002", "visit_id": "7", "users": ["simple/bob"],
             "datasets": [{"name": "big", "datafiles": [{"name": "big.nxs",
                                                          "size": BIG_SIZE}]}]}])


@dataclass
class Cluster:
    server: PrefectServer
    sim: RunningFacility
    root: Path
    target: Path
    ledger_url: str
    hosts: list[Process] = field(default_factory=list)
    submitted: list[int] = field(default_factory=list)

    def ensure_hosts(self, n: int) -> None:
        while len(self.hosts) < n:
            self.host(f"w{len(self.hosts) + 1}")

    def datafiles_of(self, download_id: int) -> list:
        d = self.sim.facility.topcat.get(download_id)
        wanted = {i.entity_id for i in d.items}
        return [df for df in self.sim.store.datafiles.values() if df.dataset_id in wanted]

    def host(self, name: str) -> Process:
        """A process worker as if on its own host: nothing on disk shared with the others."""
        home = self.root / "hosts" / name
        for sub in ("tmp", "state", "prefect-home"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        proc = self.server.spawn(
            f"worker-{name}", [sys.executable, "-m", "prefect", "worker", "start",
                               "--pool", "pollcat", "--name", name,
                               "--limit", str(WORKER_LIMIT)],
            cwd=home, TMPDIR=str(home / "tmp"), PREFECT_HOME=str(home / "prefect-home"),
            POLLCAT_STATE_DIR=str(home / "state"), PREFECT_WORKER_QUERY_SECONDS="1")
        self.hosts.append(proc)
        return proc

    def stop_hosts(self) -> None:
        for proc in self.hosts:
            proc.stop()
        self.hosts.clear()

    def deployment(self, name: str) -> dict:
        return self.server.api("GET", f"/deployments/name/{name}").json()

    def sweep_now(self) -> str:
        """A manual sweep run, as the schedule makes them (one running at the same time
        cancels it: either way one sweep dispatches)."""
        dep = self.deployment(f"pollcat-sweep/sweep-{BLOCK}")
        return self.server.api("POST", f"/deployments/{dep['id']}/create_flow_run",
                               json={}).json()["id"]

    def run_state(self, run_id: str) -> str:
        return self.server.api("GET", f"/flow_runs/{run_id}").json()["state_type"]

    def deliver_runs(self) -> list[dict]:
        dep = self.deployment(f"pollcat-deliver/deliver-{BLOCK}")
        return self.server.api("POST", "/flow_runs/filter", json={
            "flow_runs": {"deployment_id": {"any_": [dep["id"]]}},
            "sort": "EXPECTED_START_TIME_ASC"}).json()

    def submit(self, user: str, password: str, dataset: str, file_name: str) -> int:
        """A user submits a download in TopCAT (cart, then submit), as the web UI does."""
        ds = next(d for d in self.sim.store.datasets.values() if d.name == dataset)
        sid = login(self.sim.url, user, password)
        cart = f"{self.sim.url}/topcat/user/cart/{FACILITY}"
        r = httpx.post(f"{cart}/cartItems", data={"sessionId": sid, "items": f"dataset {ds.id}"},
                       timeout=30)
        r.raise_for_status()
        r = httpx.post(f"{cart}/submit", timeout=60, data={
            "sessionId": sid, "transport": "globus", "fileName": file_name,
            "email": f"{user}@example.org", "zipType": "ZIP"})
        r.raise_for_status()
        return int(r.json()["downloadId"])


def _blocks_code(sim_url: str, target: Path, ledger_url: str, state_dir: Path) -> str:
    return f"""
from pollcat.blocks import DeliveryTarget, PollcatFacility
DeliveryTarget(url='file://{target}', concurrency=4,
               writer_limit={WRITER_LIMIT}).save('scale-globus', overwrite=True)
PollcatFacility(facility_name={FACILITY!r}, icat_url={sim_url!r}, ids_url={sim_url!r},
    topcat_url={sim_url!r}, username='pollcat', password='pollpass',
    routes={{'globus': 'scale-globus'}}, ledger_url={ledger_url!r}, state_dir={str(state_dir)!r},
    poll_budget_seconds=20, ids_stream_limit={IDS_LIMIT}, dispatch_deliveries=True,
    max_parallel_downloads=4).save({BLOCK!r}, overwrite=True)
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("scale-out")
    with running_postgres() as pg:
        prefect_sync = pg.create_database("prefect")
        prefect_db = prefect_sync.replace("+psycopg", "+asyncpg")
        ledger_url = pg.create_database("ledger")
        server = PrefectServer(root / "server", **SERVER_ENV,
                               PREFECT_API_DATABASE_CONNECTION_URL=prefect_db,
                               PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=LEASE_STORAGE).start()
        c = None
        try:
            with running_facility(_scenario(), root / "ids") as sim:
                res = server.python("-m", "deployments.bootstrap")
                assert res.returncode == 0, res.stdout + res.stderr
                res = server.python("-c", _blocks_code(sim.url, root / "target", ledger_url,
                                                       root / "admin-state"))
                assert res.returncode == 0, res.stdout + res.stderr
                # a long interval: the test starts the sweeps itself
                res = server.python("-m", "deployments.bootstrap", "--deploy",
                                    "--sweep-interval", "3600", timeout=300)
                assert res.returncode == 0, res.stdout + res.stderr
                ids_limit = f"concurrency limit {ids_limit_name(sim.url)} ({IDS_LIMIT}): created"
                assert ids_limit in res.stdout, res.stdout
                assert (f"concurrency limit pollcat-target-{FACILITY}-globus ({WRITER_LIMIT}): "
                        "created") in res.stdout, res.stdout
                # the server really keeps its state in PostgreSQL (not a fallback SQLite file)
                assert {f"sweep-{BLOCK}", f"deliver-{BLOCK}"} <= _rows(
                    prefect_sync, "SELECT name FROM deployment")
                c = Cluster(server, sim, root, root / "target", ledger_url)
                sim.add_fault(**SLOW_STREAMS)
                yield c
        finally:
            if c is not None:
                c.stop_hosts()
            server.stop()
    if MEASURED:
        print("\nmeasured:", json.dumps(MEASURED, indent=1))


def _rows(sqlalchemy_url: str, query: str) -> set:
    """The first column of `query` on a PostgreSQL database (psycopg URL)."""
    import psycopg

    with psycopg.connect(sqlalchemy_url.replace("postgresql+psycopg", "postgresql")) as conn:
        return {row[0] for row in conn.execute(query)}


def _wait(cond, timeout: float, what: str, cluster: Cluster, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every)
    logs = "\n".join(f"--- {p.name}\n{p.log()[-2500:]}" for p in cluster.hosts)
    pytest.fail(f"timed out: {what}\n{logs}")


def _all_complete(cluster: Cluster, ids: list[int]):
    now = statuses(cluster.sim.url)
    return all(now.get(i) == "COMPLETE" for i in ids)


SWEEP_HOST = """
import json, sys, time
from pollcat.blocks import PollcatFacility
from pollcat.flows.dispatch import Dispatcher, find_deliver_deployment
block, start_at = sys.argv[1], float(sys.argv[2])
deployment = find_deliver_deployment(block)
with PollcatFacility.load(block).get_pipeline() as pipeline:
    downloads = pipeline.discover()
    time.sleep(max(0.0, start_at - time.time()))  # both hosts check and dispatch at once
    outcomes = pipeline.sweep(downloads, submit=Dispatcher(block, deployment))
print(json.dumps({o.download_id: str(o.outcome) for o in outcomes}))
"""


def _two_sweep_hosts(cluster: Cluster, start_at: float) -> list[dict[str, str]]:
    """Two sweep processes (two hosts running the sweep) dispatching the same work at once."""
    procs = []
    for name in ("sweep-host-1", "sweep-host-2"):
        home = cluster.root / "hosts" / name
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        procs.append(subprocess.Popen(
            [sys.executable, "-c", SWEEP_HOST, BLOCK, str(start_at)], cwd=home,
            env=cluster.server.env(TMPDIR=str(home / "tmp"), POLLCAT_STATE_DIR=str(home)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def _batch(cluster: Cluster, n: int, dispatch) -> None:
    """Batch `n` (1-based) of BATCH downloads, delivered by `n` worker hosts; `dispatch()`
    starts the work. Records the throughput and checks that batch."""
    sim = cluster.sim
    cluster.ensure_hosts(n)
    ids = [cluster.submit("alice", "alicepass", f"ds-{i:02d}", f"alice_ds{i:02d}")
           for i in range((n - 1) * BATCH, n * BATCH)]
    cluster.submitted += ids
    _wait(lambda: {statuses(sim.url)[i] for i in ids} == {"RESTORING"}, 30,
          "downloads submitted", cluster, 0.3)
    time.sleep(3)  # the new worker is polling
    t0 = dispatch() or time.monotonic()
    _wait(lambda: _all_complete(cluster, ids), 300, f"batch {n} COMPLETE", cluster)
    took = time.monotonic() - t0
    # a deliver run sets TopCAT COMPLETE, then reports and only then ends: wait for its state
    _wait(lambda: _runs_final(cluster, ids), 60, f"batch {n} deliver runs ended", cluster, 0.5)
    mb = BATCH * FILES_PER_DOWNLOAD * FILE_SIZE / 1e6
    MEASURED[f"{n} worker(s)"] = (f"{BATCH} downloads in {took:.1f} s: "
                                  f"{BATCH / took * 60:.1f} downloads/min, {mb / took:.1f} MB/s")
    _check_delivered_once(cluster, ids)


def _runs_final(cluster: Cluster, ids: list[int]) -> bool:
    wanted = {f"deliver-{BLOCK}-{i}" for i in ids}
    runs = [r for r in cluster.deliver_runs() if r["name"] in wanted]
    return {r["name"] for r in runs} == wanted and all(r["state_type"] in FINAL for r in runs)


def _check_delivered_once(cluster: Cluster, ids: list[int]) -> None:
    """One completed deliver run, one getData stream per file, verified bytes, one e-mail per
    download; the per-IDS limit reached and never exceeded."""
    sim = cluster.sim
    runs = [r for r in cluster.deliver_runs()
            if int(r["name"].rsplit("-", 1)[1]) in ids]
    by_name = Counter(r["name"] for r in runs)
    assert sorted(by_name) == sorted(f"deliver-{BLOCK}-{i}" for i in ids)
    assert set(by_name.values()) == {1}, [n for n, k in by_name.items() if k > 1]
    assert {r["state_type"] for r in runs} == {"COMPLETED"}

    files = {p.name: p for p in delivered_files(cluster.target).values()}
    wanted = [df for i in ids for df in cluster.datafiles_of(i)]
    for df in wanted:
        assert files[df.name].stat().st_size == df.size
        assert int(crc_hex(files[df.name]), 16) == int(df.checksum, 16)
    served = Counter(sim.facility.ids_streams.snapshot()["datafiles"])
    assert {df.id: served[df.id] for df in wanted} == {df.id: 1 for df in wanted}

    mails = Counter(m["download_id"] for m in sim.facility.mail_outbox)
    assert {i: mails[i] for i in ids} == {i: 1 for i in ids}

    peak = sim.facility.ids_streams.snapshot()["peak"]
    assert peak == IDS_LIMIT, f"peak {peak} concurrent getData streams, limit {IDS_LIMIT}"
    MEASURED["peak concurrent getData streams"] = f"{peak} (limit {IDS_LIMIT})"


def test_one_host_delivers_a_batch_dispatched_by_the_deployed_sweep(cluster: Cluster):
    _batch(cluster, 1, lambda: cluster.sweep_now() and None)
    sweeps = cluster.server.api("POST", "/flow_runs/filter", json={
        "flow_runs": {"name": {"like_": f"sweep-{BLOCK}"}}}).json()
    assert any(r["state_type"] == "COMPLETED" for r in sweeps)


def test_two_sweep_hosts_at_once_create_no_second_run(cluster: Cluster):
    seen: list[dict[str, str]] = []

    def dispatch() -> float:
        start_at = time.time() + 12  # both processes are up, then both dispatch at once
        seen.extend(_two_sweep_hosts(cluster, start_at))
        return time.monotonic() - (time.time() - start_at)

    _batch(cluster, 2, dispatch)  # asserts one deliver run per download
    both = set(seen[0]) & set(seen[1])
    assert all(o == "dispatched" for s in seen for o in s.values()), seen
    assert len(both) == BATCH, f"only {len(both)} downloads dispatched by both hosts"


def test_three_hosts_and_every_download_delivered_once(cluster: Cluster):
    _batch(cluster, 3, lambda: cluster.sweep_now() and None)
    _check_delivered_once(cluster, cluster.submitted)  # all batches of the module
    assert len({r["idempotency_key"] for r in cluster.deliver_runs()}) == len(
        cluster.deliver_runs())


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (the worker's flow-run subprocesses)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _part_size(target: Path) -> int:
    parts = [p.stat().st_size for p in target.rglob("*.pollcat-part")] if target.exists() else []
    return max(parts, default=0)


def test_killed_host_is_taken_over_from_the_part_file(cluster: Cluster):
    sim = cluster.sim
    cluster.stop_hosts()
    sim.facility.faults.clear()
    sim.facility.ids_streams.reset()
    did = cluster.submit("bob", "bobpass", "big", "bob_big")
    sim.add_fault(kind="stall", service="ids", endpoint="getData", after_bytes=STALL_AT,
                  seconds=120, count=1)
    doomed = cluster.host("doomed")
    _wait(lambda: statuses(sim.url)[did] == "RESTORING", 30, "submitted", cluster, 0.3)
    cluster.sweep_now()
    _wait(lambda: _part_size(cluster.target) >= STALL_AT - 2 * 1024 * 1024, 120,
          "the transfer reached the stall", cluster)
    first = [r for r in cluster.deliver_runs() if r["name"] == f"deliver-{BLOCK}-{did}"]
    assert [r["state_type"] for r in first] == ["RUNNING"]

    # the host dies: the worker and its flow run, with no chance to clean up
    victims = [doomed.popen.pid, *_descendants(doomed.popen.pid)]
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    t_kill = time.monotonic()
    doomed.stop()
    kept = _part_size(cluster.target)
    cluster.host("survivor")

    last: list[str] = []

    def delivered() -> bool:
        if statuses(sim.url)[did] == "COMPLETE":
            return True
        if not last or cluster.run_state(last[-1]) in FINAL:
            last.append(cluster.sweep_now())  # what the schedule does every interval
        return False

    _wait(delivered, 300, "the surviving host delivered the download", cluster, 5)
    took = time.monotonic() - t_kill

    def deliver_runs_settled() -> list[dict] | None:
        """The download's deliver runs once the last one has ended: TopCAT says COMPLETE
        before that run returns (it still reports and releases its lease; one CI run under
        load saw it RUNNING at that moment)."""
        runs = [r for r in cluster.deliver_runs() if r["name"] == f"deliver-{BLOCK}-{did}"]
        return runs if runs[-1]["state_type"] in FINAL else None

    runs = _wait(deliver_runs_settled, 60, "the delivering run ended", cluster, 1)
    assert runs[0]["id"] == first[0]["id"] and runs[0]["state_type"] == "CRASHED"
    assert runs[-1]["state_type"] == "COMPLETED"
    assert runs[-1]["idempotency_key"] != runs[0]["idempotency_key"]

    big = next(df for df in sim.store.datafiles.values() if df.name == "big.nxs")
    path = next(p for p in delivered_files(cluster.target).values() if p.name == "big.nxs")
    assert path.stat().st_size == big.size
    assert int(crc_hex(path), 16) == int(big.checksum, 16)
    streams = sim.facility.ids_streams.snapshot()
    # continued from the part file: the IDS served a Range request starting where it ended
    assert streams["resumed"] and max(streams["resumed"]) >= kept - 2 * 1024 * 1024, (
        streams, kept)
    assert Counter(m["download_id"] for m in sim.facility.mail_outbox)[did] == 1
    # the shared ledger (PostgreSQL) says delivered, and nobody holds the download any more
    assert _rows(cluster.ledger_url, f"SELECT verdict FROM pollcat_ledger "
                                     f"WHERE download_id = {did}") == {"completed"}
    assert _rows(cluster.ledger_url, "SELECT download_id FROM pollcat_lease") == set()

    # the dead host's IDS slot came back (its lease expired)
    name = ids_limit_name(sim.url)
    _wait(lambda: cluster.server.api("GET", f"/v2/concurrency_limits/{name}").json()[
        "active_slots"] == 0, 120, "the dead host's slot released", cluster, 2)
    MEASURED["kill -9 → delivered by another host"] = (
        f"{took:.0f} s (part file of {kept / 2**20:.0f} MiB continued)")
    cluster.stop_hosts()
