"""The simulator is never the bottleneck: start-up of a 100,000-datafile / 1,000-download
scenario, curl throughput of one 1 GiB getData, and 100 concurrent getData streams."""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from bench.common import curl_speed, login, sim_process


def big_scenario(files: int = 100_000, downloads: int = 1000) -> dict:
    per_ds = 1000
    datasets = [{"name": f"ds{d:03d}", "datafiles": [
        {"generate": per_ds, "size": 1024, "name_pattern": f"d{d:03d}_{{i:05d}}.dat"}]}
        for d in range(files // per_ds)]
    return {
        "facility": "SCALE", "storage": "two-level", "admins": ["simple/pollcat"],
        "restore": {"latency_s": 1},
        "users": [{"name": "simple/pollcat", "password": "p"},
                  {"name": "simple/alice", "password": "a", "email": "a@example.org"}],
        "investigations": [{"name": "SCALE", "visit_id": "1", "title": "scale",
                            "users": ["simple/alice"], "datasets": datasets}],
        "topcat": {"poll_delay_s": 0, "poll_interval_wait_s": 5},
        "downloads": [{"user": "simple/alice", "transport": "globus", "file_name": f"dl{i}",
                       "email": "a@example.org",
                       "items": [{"investigation": "SCALE",
                                  "dataset": f"ds{i % len(datasets):03d}"}]}
                      for i in range(downloads)],
    }


def one_big(size: int) -> dict:
    return {
        "facility": "TPUT", "storage": "single-level", "admins": ["simple/pollcat"],
        "users": [{"name": "simple/pollcat", "password": "p"}],
        "investigations": [{"name": "T", "visit_id": "1", "title": "t", "datasets": [
            {"name": "ds", "datafiles": [{"name": "big.raw", "size": size}] +
             [{"name": f"f{i:03d}.raw", "size": 8 << 20} for i in range(100)]}]}],
    }


def main() -> dict:
    result: dict = {}
    with sim_process(big_scenario()) as (url, startup):
        result["startup_100k_files_1000_downloads_s"] = round(startup, 2)
        sid = login(url, "pollcat", "p")
        t0 = time.monotonic()
        n = requests.get(f"{url}/icat/entityManager", params={
            "sessionId": sid, "query": "SELECT COUNT(df) FROM Datafile df"}, timeout=60).json()
        result["count_query_s"] = round(time.monotonic() - t0, 3)
        result["datafiles"] = n[0]
    with sim_process(one_big(1 << 30)) as (url, _):
        sid = login(url, "pollcat", "p")
        rows = requests.get(f"{url}/icat/entityManager", params={
            "sessionId": sid, "query": "SELECT df FROM Datafile df ORDER BY df.id"},
            timeout=60).json()
        ids = [r["Datafile"]["id"] for r in rows]
        bps, size = curl_speed(f"{url}/ids/getData?sessionId={sid}&datafileIds={ids[0]}")
        result["curl_1GiB_MBps"] = round(bps / 1e6, 1)

        def fetch(dfid: int) -> int:
            with requests.get(f"{url}/ids/getData", params={
                    "sessionId": sid, "datafileIds": dfid}, stream=True, timeout=120) as r:
                r.raise_for_status()
                return sum(len(c) for c in r.iter_content(1 << 20))

        t0 = time.monotonic()
        with ThreadPoolExecutor(100) as pool:
            total = sum(pool.map(fetch, ids[1:101]))
        secs = time.monotonic() - t0
        result["concurrent_100_streams_bytes"] = total
        result["concurrent_100_streams_MBps"] = round(total / secs / 1e6, 1)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
