"""`make demo`: pollcat's main job, end to end, on the embedded simulated facility.

Starts the simulated facility (scenarios/demo.yaml: two-level storage, 6 downloads over the
globus and scarf transports), saves pollcat's blocks, runs the real `pollcat-sweep` Prefect flow
until TopCAT shows every download COMPLETE, and prints where the files are. The demo is
infrastructure, not product: only this script imports both pollcat and simfacility.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "demo-output"
DEADLINE_S = 170


def main() -> int:
    prefect_home = tempfile.mkdtemp(prefix="pollcat-demo-prefect-")
    os.environ.setdefault("PREFECT_HOME", prefect_home)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    sys.path.insert(0, str(REPO))
    import requests

    from blocks import DeliveryTarget, PollcatFacility
    from flows.sweep import sweep
    from simfacility.server import running_facility

    t0 = time.monotonic()
    OUT.mkdir(exist_ok=True)
    with running_facility(REPO / "scenarios" / "demo.yaml",
                          tempfile.mkdtemp(prefix="pollcat-demo-ids-")) as sim:
        print(f"simulated facility LILS at {sim.url} "
              f"({len(sim.store.datafiles)} datafiles, two-level storage)")
        for transport in ("globus", "scarf"):
            DeliveryTarget(url=f"file://{OUT / transport}", concurrency=4,
                           custom_value="Delivered to {path}").save(
                f"demo-{transport}", overwrite=True)
        PollcatFacility(
            facility_name="LILS", icat_url=sim.url, ids_url=sim.url, topcat_url=sim.url,
            username="pollcat", password="pollpass",
            routes={"globus": "demo-globus", "scarf": "demo-scarf"},
            state_dir=str(Path(prefect_home) / "pollcat-state"), poll_budget_seconds=8,
        ).save("demo-lils", overwrite=True)
        rows: dict[int, dict] = {}
        n = 0
        while time.monotonic() - t0 < DEADLINE_S:
            n += 1
            for row in sweep(facility="demo-lils"):
                if row["outcome"] != "waiting" or row["download_id"] not in rows:
                    rows[row["download_id"]] = row
            statuses = _statuses(requests, sim.url)
            print(f"sweep {n}: " + ", ".join(f"{i}:{s}" for i, s in sorted(statuses.items())))
            if statuses and all(s == "COMPLETE" for s in statuses.values()):
                break
        else:
            print("demo: not every download completed in time", file=sys.stderr)
            return 1
        _print_summary(rows, sim)
    print(f"\ndemo finished in {time.monotonic() - t0:.0f} s; files are under {OUT}/")
    return 0


def _statuses(requests, url: str) -> dict[int, str]:
    sid = requests.post(f"{url}/icat/session", data={"json": (
        '{"plugin":"simple","credentials":[{"username":"pollcat"},{"password":"pollpass"}]}')},
        timeout=10).json()["sessionId"]
    rows = requests.get(f"{url}/topcat/admin/downloads", params={
        "facilityName": "LILS", "sessionId": sid, "queryOffset": "where 1 = 1"},
        timeout=10).json()
    return {r["id"]: r["status"] for r in rows}


def _print_summary(rows: dict[int, dict], sim) -> None:
    from pollcat.report import format_rows

    print()
    print(format_rows([rows[i] for i in sorted(rows)]))
    print(f"\ne-mails TopCAT sent: {len(sim.facility.mail_outbox)}")
    for m in sim.facility.mail_outbox:
        print(f"  to {m.get('to')}: {m.get('subject')}")


if __name__ == "__main__":
    sys.exit(main())
