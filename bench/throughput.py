"""One 1 GiB file delivered by pollcat to a local target, next to `curl -o` of the same
getData URL in the same run (wire-speed reference), on single-level storage so only the
transfer is measured."""

from __future__ import annotations

import json
import sys
import tempfile
import time
import zlib
from pathlib import Path

from bench.common import curl_speed, login, sim_process

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


def main(size: int = GIB) -> dict:
    from pollcat.config import FacilityConfig, PipelineConfig, TargetConfig
    from pollcat.pipeline import Pipeline

    work = Path(tempfile.mkdtemp(prefix="pollcat-tput-"))
    with sim_process(scenario(size)) as (url, startup):
        sid = login(url, "pollcat", "pollpass")
        rows = __import__("requests").get(f"{url}/icat/entityManager", params={
            "sessionId": sid, "query": "SELECT df FROM Datafile df"}, timeout=30).json()
        df = rows[0]["Datafile"]
        get_url = f"{url}/ids/getData?sessionId={sid}&datafileIds={df['id']}"
        curl_out = work / "curl.raw"
        curl_bps, curl_bytes = curl_speed(get_url, str(curl_out))
        curl_out.unlink()
        cfg = PipelineConfig(
            facility=FacilityConfig(name="BENCH", icat_url=url, ids_url=url, topcat_url=url,
                                    username="pollcat", password="pollpass", timeout_s=120),
            routes={"globus": TargetConfig(url=f"file://{work / 'target'}")},
            state_dir=work / "state", poll_budget_s=30)
        pipe = Pipeline(cfg)
        t0 = time.monotonic()
        outcomes = pipe.sweep()
        wall = time.monotonic() - t0
        pipe.clients.close()
        (out,) = outcomes
        assert out.outcome == "completed", out
        delivered = next((work / "target").rglob("big.raw"))
        crc = 0
        with open(delivered, "rb") as fh:
            while chunk := fh.read(1 << 22):
                crc = zlib.crc32(chunk, crc)
        assert int(df["checksum"], 16) == crc and delivered.stat().st_size == size
    result = {
        "bytes": size, "curl_MBps": round(curl_bps / 1e6, 1), "curl_bytes": curl_bytes,
        "pollcat_transfer_MBps": round(out.mb_per_s, 1), "pollcat_transfer_s": round(
            out.seconds, 2), "pollcat_sweep_wall_s": round(wall, 2),
        "ratio_vs_curl": round(out.mb_per_s * 1e6 / curl_bps, 2),
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else GIB)
