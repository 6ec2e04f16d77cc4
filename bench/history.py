"""History must not slow a sweep: discovery with 100,000 COMPLETE downloads in TopCAT.

Single-level discovery asks TopCAT for COMPLETE downloads (they may still need delivering) and
filters them client-side. This measures a sweep's discovery with no history and with `history`
COMPLETE downloads, today (paging through all of them) and with the narrowed query
(`TopcatAdmin.pending(..., after_id=<highest id already settled>)`).

The history is put straight into the simulator's TopCAT table (submitting 100,000 downloads
through the user API would take most of an hour), so this simulator runs in this process: the
figures are ratios between sweeps of one run, where that costs the same on both sides.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.common import pipeline
from bench.many import one_download


def _add_history(sim, n: int) -> int:
    """`n` COMPLETE, month-old copies of download 1; returns the highest id."""
    state = sim.facility.topcat
    old = datetime.now(UTC) - timedelta(days=30)
    with state.lock:  # TopCAT's StatusCheck thread iterates the table
        table = state.downloads
        model, top = table[1], max(table)
        table.update({i: dataclasses.replace(model, id=i, status="COMPLETE", created_at=old,
                                             completed_at=old, file_name=f"old{i}")
                      for i in range(top + 1, top + 1 + n)})
    return top + n


def _median_s(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.monotonic()
        fn()
        times.append(time.monotonic() - t0)
    return statistics.median(times)


def main(history: int = 100_000, today_history: int = 10_000, rounds: int = 3) -> dict:
    """Today's discovery pages through every COMPLETE row, and the simulator evaluates each
    page by a scan of its table, so its cost grows with the square of the history: it is
    measured at `today_history` (100,000 would take a quarter of an hour). The narrowed query
    is measured at `history`."""
    from pollcat.states import DownloadStatus
    from simfacility.server import running_facility

    work = Path(tempfile.mkdtemp(prefix="pollcat-history-"))
    result: dict = {"rounds": rounds}
    with running_facility(one_download(1, 1024)) as sim:
        pipe = pipeline(sim.url, work, "h", facility="MANY")
        (out,) = pipe.sweep()  # deliver the one download: what is left is pure discovery
        assert out.outcome == "completed", out
        settled = max(sim.facility.topcat.downloads)

        def narrowed() -> int:
            found = pipe.topcat.pending("globus", DownloadStatus.RESTORING)
            found += pipe.topcat.pending("globus", DownloadStatus.COMPLETE, after_id=settled)
            pipe.sweep(found)
            return len(found)

        def today() -> int:
            return len(pipe.topcat.pending("globus", DownloadStatus.COMPLETE))

        none = {"sweep_s": _median_s(pipe.sweep, rounds),
                "narrowed_sweep_s": _median_s(narrowed, rounds), "rows_today": today()}
        settled = _add_history(sim, today_history)
        some = {"history": today_history, "sweep_s": _median_s(pipe.sweep, 1),
                "rows_today": today()}
        settled = _add_history(sim, history - today_history)
        full = {"history": history, "narrowed_sweep_s": _median_s(narrowed, rounds),
                "rows_narrowed": narrowed()}
        pipe.clients.close()
    shutil.rmtree(work, ignore_errors=True)
    result.update(
        none={k: round(v, 3) for k, v in none.items()}, today=some, narrowed=full,
        ratio_today=round(some["sweep_s"] / none["sweep_s"], 1),
        ratio_narrowed=round(full["narrowed_sweep_s"] / none["narrowed_sweep_s"], 2))
    for part in (some, full):
        for k, v in part.items():
            part[k] = round(v, 3) if isinstance(v, float) else v
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
