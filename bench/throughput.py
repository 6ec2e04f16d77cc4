"""One 1 GiB file delivered by pollcat to a local target, next to `curl -o` of the same
getData URL in the same run (wire-speed reference), on single-level storage so only the
transfer is measured."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

import requests

from bench.common import curl_speed, idle_memory, just_freed_memory, login, sim_process

GIB = 1 << 30


def scenario(size: int) -> dict:
    return {
        "facility": "BENCH", "storage": "single-level", "admins": ["simple/pollcat"],
        "users": [{"name": "simple/pollcat", "password": "pollpass"},
                  {"name": "simple/alice", "password": "a", "email": "a@example.org"}],
        "investigations": [{"name": "BIG", "visit_id": "1", "title": "big",
                            "users": ["simple/alice"],
                            "datasets": [{"name": "ds", "datafiles": [
                                {"name": "big.raw", "size": size}]}]}],
        "topcat": {"poll_delay_s": 0, "poll_interval_wait_s": 0.5},
        "downloads": [{"user": "simple/alice", "transport": "globus", "file_name": "big",
                       "email": "a@example.org", "items": [{"investigation": "BIG"}]}],
    }


def _pollcat_once(url: str, work: Path, size: int, checksum: str, n: int):
    from pollcat.config import FacilityConfig, PipelineConfig, TargetConfig
    from pollcat.pipeline import Pipeline

    target = work / f"target{n}"
    cfg = PipelineConfig(
        facility=FacilityConfig(facility_name="BENCH", icat_url=url, ids_url=url, topcat_url=url,
                                username="pollcat", password="pollpass", timeout_seconds=120),
        routes={"globus": TargetConfig(url=f"file://{target}")},
        state_dir=work / f"state{n}", poll_budget_seconds=30)
    pipe = Pipeline(cfg)
    t0 = time.monotonic()
    (out,) = pipe.sweep()
    wall = time.monotonic() - t0
    pipe.clients.close()
    assert out.outcome == "completed", out
    delivered = next(target.rglob("big.raw"))
    crc = 0
    with open(delivered, "rb") as fh:
        while chunk := fh.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    assert int(checksum, 16) == crc and delivered.stat().st_size == size
    shutil.rmtree(target)
    return out, wall


def _curl_durable(get_url: str, out: Path, size: int) -> tuple[float, float]:
    """(`curl -o` MB/s, `curl -o; fsync` MB/s) of one round."""
    t0 = time.monotonic()
    bps, nbytes = curl_speed(get_url, str(out))
    fd = os.open(out, os.O_RDONLY)  # the same durability as pollcat's delivery
    os.fsync(fd)
    os.close(fd)
    synced = size / (time.monotonic() - t0) / 1e6
    assert nbytes == size
    out.unlink()
    return bps / 1e6, synced


def _medians(curl: list, synced: list, moved: list) -> dict:
    return {"curl_o_MBps": [round(x, 1) for x in curl],
            "curl_o_fsync_MBps": [round(x, 1) for x in synced],
            "pollcat_MBps": [round(x, 1) for x in moved],
            "median_ratio": round(statistics.median(moved) / statistics.median(curl), 2),
            "median_ratio_to_curl_fsync": round(statistics.median(moved)
                                                / statistics.median(synced), 2)}


def main(size: int = GIB, rounds: int = 3) -> dict:
    """Alternate curl and pollcat `rounds` times against one simulator; report medians.

    Every round of either writes into memory just freed (`just_freed_memory`); a second set of
    rounds starts each writer after `idle_memory`, the state where this VM's host must back
    every page again (bench/common.py), so both states are measured for both writers."""
    work = Path(tempfile.mkdtemp(prefix="pollcat-tput-"))
    curl, moved, walls, null, synced = [], [], [], [], []
    idle_curl, idle_synced, idle_moved = [], [], []
    with sim_process(scenario(size)) as (url, _startup):
        sid = login(url, "pollcat", "pollpass")
        rows = requests.get(f"{url}/icat/entityManager", params={
            "sessionId": sid, "query": "SELECT df FROM Datafile df"}, timeout=30).json()
        df = rows[0]["Datafile"]
        get_url = f"{url}/ids/getData?sessionId={sid}&datafileIds={df['id']}"
        room = size + size // 8
        for n in range(rounds):
            just_freed_memory(room, work)
            plain, durable = _curl_durable(get_url, work / "curl.raw", size)
            curl.append(plain)
            synced.append(durable)
            null.append(curl_speed(get_url)[0] / 1e6)
            just_freed_memory(room, work)
            out, wall = _pollcat_once(url, work, size, df["checksum"], n)
            moved.append(out.mb_per_s)
            walls.append(wall)
        for n in range(rounds):
            idle_memory()
            plain, durable = _curl_durable(get_url, work / "curl.raw", size)
            idle_curl.append(plain)
            idle_synced.append(durable)
            idle_memory()
            idle_moved.append(_pollcat_once(url, work, size, df["checksum"], rounds + n)[0]
                              .mb_per_s)
    shutil.rmtree(work, ignore_errors=True)
    result = {
        "bytes": size, "rounds": rounds,
        **_medians(curl, synced, moved),
        "pollcat_sweep_wall_s": [round(x, 2) for x in walls],
        "median_curl_o_MBps": round(statistics.median(curl), 1),
        "median_pollcat_MBps": round(statistics.median(moved), 1),
        "curl_dev_null_MBps": [round(x, 1) for x in null],
        "median_curl_dev_null_MBps": round(statistics.median(null), 1),
        "median_curl_o_fsync_MBps": round(statistics.median(synced), 1),
        "idle_memory": _medians(idle_curl, idle_synced, idle_moved),
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else GIB)
