"""History must not slow a sweep: a single-level sweep with 100,000 COMPLETE downloads in TopCAT.

TopCAT's table has no index but its primary key: any question by status reads the whole
history. `Pipeline.discover` keeps a bound in the ledger (the download id below which everything
is settled) and asks for newer ids only; pages continue after the last id seen; every
`full_scan_minutes` one sweep also asks for every RESTORING download (an admin's resume below
the bound). This measures the pipeline's own sweep with no history and with `history` month-old
COMPLETE downloads: the first sweep after they appeared (it pages through them once and moves
the bound), then the sweeps that follow (the goal), the extra question of the periodic full
scan, and for comparison the unbounded COMPLETE query every sweep made before.

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

MONTH_AGO = datetime.now(UTC) - timedelta(days=30)


def _add_history(sim, n: int) -> int:
    """`n` COMPLETE, month-old copies of download 1 (itself made a month old, as the delivery
    it stands for); returns the highest id."""
    state = sim.facility.topcat
    with state.lock:  # TopCAT's StatusCheck thread iterates the table
        table = state.downloads
        model, top = table[1], max(table)
        model.created_at = MONTH_AGO
        table.update({i: dataclasses.replace(model, id=i, status="COMPLETE",
                                             completed_at=MONTH_AGO, file_name=f"old{i}")
                      for i in range(top + 1, top + 1 + n)})
    return top + n


def _timed(fn) -> tuple[float, object]:
    t0 = time.monotonic()
    value = fn()
    return time.monotonic() - t0, value


def _median_s(fn, rounds: int) -> float:
    return statistics.median(_timed(fn)[0] for _ in range(rounds))


def main(history: int = 100_000, rounds: int = 5) -> dict:
    from pollcat.states import DownloadStatus
    from simfacility.server import running_facility

    work = Path(tempfile.mkdtemp(prefix="pollcat-history-"))
    with running_facility(one_download(1, 1024)) as sim:
        pipe = pipeline(sim.url, work, "h", facility="MANY")
        (out,) = pipe.sweep()  # deliver the one download: what is left is pure discovery
        assert out.outcome == "completed", out
        _add_history(sim, 0)
        none = {"sweep_s": _median_s(pipe.sweep, rounds), "restoring_query_s": _median_s(
            lambda: pipe.topcat.pending("globus", DownloadStatus.RESTORING), rounds)}
        top = _add_history(sim, history)
        first_s, found = _timed(pipe.sweep)
        assert found == [], found
        bound = pipe.state.scan_bound("transport:globus")
        assert bound == top, (bound, top)  # the whole history is settled
        full = {"history": history, "first_sweep_s": first_s,
                "sweep_s": _median_s(pipe.sweep, rounds), "bound": bound}
        # what a sweep adds every full_scan_minutes: TopCAT scanning its table for RESTORING
        # downloads (an admin may resume any old download)
        full["full_scan_minutes"] = pipe.cfg.full_scan_minutes
        full["restoring_query_s"] = _median_s(
            lambda: pipe.topcat.pending("globus", DownloadStatus.RESTORING), rounds)
        unbounded_s, rows = _timed(lambda: pipe.topcat.pending("globus",
                                                               DownloadStatus.COMPLETE))
        full.update(unbounded_query_s=unbounded_s, unbounded_rows=len(rows))
        pipe.clients.close()
    shutil.rmtree(work, ignore_errors=True)
    result = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "rounds": rounds,
              "none": {k: round(v, 4) for k, v in none.items()},
              "history": {k: round(v, 4) if isinstance(v, float) else v
                          for k, v in full.items()}}
    result["ratio"] = round(full["sweep_s"] / none["sweep_s"], 2)
    result["ratio_unbounded"] = round((full["sweep_s"] + unbounded_s) / none["sweep_s"], 1)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
