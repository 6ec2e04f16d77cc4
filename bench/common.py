"""Start `pollcat-sim` as its own process (so it never shares a GIL with what it measures)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import requests
import yaml

# ext4 skips, when it allocates an inode, every inode of the group deleted in the last 60 s, or
# the last 360 s while that inode table block is still dirty (`recently_deleted` in
# fs/ext4/ialloc.c). `make test` deletes tens of thousands of temporary files; `perf` put a
# quarter of a 2,000-file pollcat round run soon after such deletions in `recently_deleted` and
# `find_get_block_common`, and curl's round took 3.76 and 4.08 s right after 20,000 deletions
# against 3.47 and 3.37 s once settled.
RECENT_DELETE_WINDOW_S = 61


# This VM's balloon device reports free memory to the host (VIRTIO_BALLOON_F_REPORTING): the
# guest kernel hands a freed 2 MiB block to the host 2 s after it was freed
# (`page_reporting_delay` in mm/page_reporting.c), the host drops its backing, and the next
# write into that memory faults on the host. `dd` writing 1 GiB into the page cache ran at
# 5.1-5.6 GB/s up to 1.5 s after 1.3 GiB had been freed and at 0.64-0.68 GB/s from 2 s on
# (2026-12-01). A timed round therefore depends on how long ago memory was freed: in the runs
# before, `curl -o` started just after pollcat's round had deleted its 1 GiB and pollcat after
# seconds of set-up, so only pollcat paid the host. Each large round now starts in the same
# state as its peer: `just_freed_memory` before both, or both after `IDLE_MEMORY_S`.
PAGE_REPORTING_DELAY_S = 2.0
IDLE_MEMORY_S = PAGE_REPORTING_DELAY_S + 1.5


def just_freed_memory(nbytes: int, folder: Path) -> None:
    """Write `nbytes` to a file and delete it, so the round that follows at once writes into
    memory the guest still backs (see PAGE_REPORTING_DELAY_S): the state of a host without a
    reporting balloon."""
    path = folder / ".pollcat-bench-warm"
    chunk = b"\1" * (1 << 20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(-(-nbytes // len(chunk))):
            os.write(fd, chunk)
    finally:
        os.close(fd)
        os.unlink(path)


def idle_memory() -> None:
    """Let every freed block be reported to the host: the state of memory after a pause."""
    time.sleep(IDLE_MEMORY_S)


def flush_dirty() -> float:
    """Seconds to write every dirty page out (`sync`). After a round of curl, which leaves
    its bytes in the page cache, this is the rest of curl's cost of making them durable; it
    also keeps the kernel from flushing them during the next round, which is not curl's: one
    run flushed 1.9 GB of earlier curl rounds while pollcat's round ran, and pollcat's kernel
    time doubled (1.2 to 2.5 s)."""
    t0 = time.monotonic()
    os.sync()
    return time.monotonic() - t0


def settle_filesystem() -> None:
    """Write every dirty block out and wait out ext4's recently-deleted window, so deletions
    made before the benchmark do not weigh on its first measures."""
    os.sync()
    time.sleep(RECENT_DELETE_WINDOW_S)


@contextlib.contextmanager
def sim_process(scenario: dict, data_dir: str | None = None) -> Iterator[tuple[str, float]]:
    """Yields (base_url, start-up seconds) of a simulator running the scenario."""
    tmp = tempfile.mkdtemp(prefix="pollcat-bench-")
    path = Path(tmp) / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario))
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "simfacility.cli", "--scenario", str(path),
                             "--data-dir", data_dir or str(Path(tmp) / "data"),
                             "--log-level", "warning"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"serving (http://\S+)", line)
        if not m:
            raise RuntimeError(f"simulator did not start: {line!r}")
        yield m.group(1), time.monotonic() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)  # the simulator's data: gigabytes per run


def login(url: str, user: str, password: str) -> str:
    creds = {"plugin": "simple", "credentials": [{"username": user}, {"password": password}]}
    return requests.post(f"{url}/icat/session", data={"json": json.dumps(creds)},
                         timeout=30).json()["sessionId"]


def curl_speed(url: str, out: str = "/dev/null") -> tuple[float, int]:
    """(bytes per second, bytes) as curl reports them."""
    res = subprocess.run(["curl", "-s", "-o", out, "-w", "%{speed_download} %{size_download}",
                          url], capture_output=True, text=True, check=True)
    speed, size = res.stdout.split()
    return float(speed), int(float(size))


def query(url: str, sid: str, jpql: str) -> list:
    """An ICAT entityManager query (rows as ICAT's JSON)."""
    resp = requests.get(f"{url}/icat/entityManager", params={"sessionId": sid, "query": jpql},
                        timeout=120)
    resp.raise_for_status()
    return resp.json()


def pipeline(url: str, work: Path, tag: str, *, facility: str, password: str = "pollpass",
             source: str = "direct", concurrency: int = 4, budget: float = 30, **sweep):
    """A Pipeline delivering every `globus` download of the simulator to `work/target<tag>`."""
    from pollcat.config import FacilityConfig, PipelineConfig, TargetConfig
    from pollcat.pipeline import Pipeline

    cfg = PipelineConfig(
        facility=FacilityConfig(facility_name=facility, icat_url=url, ids_url=url,
                                topcat_url=url, username="pollcat", password=password,
                                timeout_seconds=120),
        routes={"globus": TargetConfig(url=f"file://{work}/target{tag}", source=source,
                                       concurrency=concurrency)},
        state_dir=work / f"state{tag}", poll_budget_seconds=budget, **sweep)
    return Pipeline(cfg)


def timed_sweep(pipe) -> tuple[list, float]:
    """(outcomes, wall seconds) of one sweep, discovery included; closes the clients."""
    t0 = time.monotonic()
    try:
        outcomes = pipe.sweep()
    finally:
        wall = time.monotonic() - t0
        pipe.clients.close()
    return outcomes, wall


def curl_many(pairs: list[tuple[str, str]], procs: int = 8, per: int = 50) -> float:
    """Seconds for `xargs -P<procs>` curl processes, each fetching `per` URLs over one
    keep-alive connection (a curl config file of url/output pairs): the tuned peer."""
    tmp = Path(tempfile.mkdtemp(prefix="pollcat-curl-"))
    configs = []
    for i in range(0, len(pairs), per):
        cfg = tmp / f"batch{i // per:05d}.cfg"
        cfg.write_text("".join(f'url = "{u}"\noutput = "{o}"\n' for u, o in pairs[i:i + per]))
        configs.append(str(cfg))
    t0 = time.monotonic()
    subprocess.run(["xargs", f"-P{procs}", "-n1", "curl", "-sf", "-K"],
                   input="\n".join(configs), text=True, check=True)
    secs = time.monotonic() - t0
    shutil.rmtree(tmp, ignore_errors=True)
    return secs
