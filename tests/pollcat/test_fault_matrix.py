"""The fault matrix: every kind of fault the simulator injects, on each call a delivery depends
on (getData, isPrepared, getDatafileIds, TopCAT's status PUT, the admin reads), once or twice.

Whatever breaks, the download ends COMPLETE within a few sweeps with every byte on the target
(size and CRC32 against ICAT), exactly one e-mail, nothing outside the target root, no part file
left, and no session id, preparedId or password in any log record, reason or ledger entry.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import requests

from pollcat import logsafe
from pollcat.errors import TransientError
from pollcat.states import OutcomeKind
from tests.conftest import scenario
from tests.support import (
    crc_hex,
    delivered_files,
    downloads,
    pipeline_for,
    statuses,
    wait_for,
    wait_status,
)

ALICE = {"user": "simple/alice", "transport": "globus", "file_name": "alice_run42",
         "email": "alice@example.org", "items": [{"investigation": "INV-001", "dataset": "run-42"}]}

STREAM = ["reset", "truncate", "corrupt", "stall"]
FAULTS = [
    # (service, endpoint, method, kind, extra)
    *[("ids", "getData", None, k, {}) for k in ["error", "latency", *STREAM]],
    ("ids", "getData", None, "error", {"status": 503, "code": "DataNotOnlineException"}),
    ("ids", "getData", None, "error", {"status": 403, "code": "InsufficientPrivilegesException",
                                       "message": "session expired"}),
    *[("ids", "isPrepared", None, k, {}) for k in ["error", "latency", *STREAM]],
    ("ids", "isPrepared", None, "error", {"status": 404, "code": "NotFoundException",
                                          "message": "The preparedId is not known"}),
    *[("ids", "getDatafileIds", None, k, {}) for k in ["error", "latency", *STREAM]],
    *[("topcat", "admin/download/*/status", "PUT", k, {}) for k in ["error", "latency",
                                                                    "reset"]],
    *[("topcat", "admin/downloads", "GET", k, {}) for k in ["error", "reset", "truncate"]],
    *[("icat", "entityManager", "GET", k, {}) for k in ["error", "reset", "corrupt"]],
]


def _spec(service, endpoint, method, kind, extra, count):
    spec = {"kind": kind, "service": service, "endpoint": endpoint, "count": count}
    if method:
        spec["method"] = method
    if kind == "error":
        spec.setdefault("status", 500)
        spec["message"] = "injected failure"
    if kind == "latency":
        spec["seconds"] = 0.3
    if kind == "stall":
        spec["seconds"] = 3  # longer than the client's 1.5 s read timeout
    if kind in ("reset", "truncate", "stall"):
        spec["after_bytes"] = 2
    if kind == "corrupt":
        spec["after_bytes"] = 1
    spec.update(extra)
    return spec


def _statuses(url: str) -> dict[int, str]:
    """The test's own look at TopCAT, which the injected fault may hit too: ask again."""
    for _ in range(5):
        try:
            return statuses(url)
        except (requests.RequestException, ValueError):
            time.sleep(0.1)
    return statuses(url)


def _secrets(sim) -> set[str]:
    found = {"pollpass"} | set(sim.facility.sessions._sessions)
    found |= set(sim.facility.prepared._records)
    for d in downloads(sim.url).values():
        found |= {d.get("preparedId")} - {None}
    return {s for s in found if s}


def _outside_root(tmp_path: Path, root: Path) -> list[Path]:
    """Files pollcat wrote anywhere but the target root and its own state dir."""
    mine = (root, tmp_path / "state", tmp_path / "sim-data-0")
    return [p for p in tmp_path.rglob("*") if p.is_file()
            and not any(p.is_relative_to(d) for d in mine)]


@pytest.mark.parametrize("count", [1, 2], ids=["once", "twice"])
@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: "-".join(
    str(x) for x in (f[0], f[1].replace("/", "_").replace("*", "N"), f[3],
                     f[4].get("status", ""))).strip("-"))
def test_fault_then_complete(make_sim, tmp_path, caplog, fault, count):
    caplog.set_level(logging.DEBUG)
    logsafe.install()  # as the CLI and the flows do: on every handler, caplog's included
    sim = make_sim(scenario(downloads=[ALICE]))
    wait_status(sim.url, "RESTORING")
    sim.add_fault(**_spec(*fault, count=count))
    pipe = pipeline_for(sim, tmp_path, facility_kw={"timeout_seconds": 1.5})
    history, failed_sweeps = [], []
    for _ in range(6):
        try:
            history.append(pipe.sweep(budget_s=2))
        except TransientError as exc:  # discovery failed: this sweep's run fails, the next
            failed_sweeps.append(str(exc))  # scheduled one starts afresh
        if _statuses(sim.url) == {1: "COMPLETE"}:
            break
    assert _statuses(sim.url) == {1: "COMPLETE"}, history
    outcomes = [o.outcome for sweep in history for o in sweep]
    assert OutcomeKind.EXPIRED not in outcomes

    root = tmp_path / "target/globus"
    files = delivered_files(root)
    assert len(files) == 2
    for rel, path in files.items():
        df = next(d for d in sim.store.datafiles.values() if rel.endswith(d.name))
        assert path.stat().st_size == df.size and int(crc_hex(path), 16) == int(df.checksum, 16)
    assert not list(root.rglob("*.pollcat-part"))
    assert not _outside_root(tmp_path, root)
    # every sweep has returned: TopCAT took exactly one COMPLETE, hence one e-mail
    puts = sim.facility.topcat.admin_status_puts
    assert [put for put in puts if put[1] == "COMPLETE"] == [(1, "COMPLETE")], puts
    wait_for(lambda: sim.facility.mail_outbox, what="the e-mail")
    assert len(sim.facility.mail_outbox) == 1

    secrets = _secrets(sim)
    texts = [r.getMessage() for r in caplog.records]
    texts += [o.reason for sweep in history for o in sweep] + failed_sweeps
    texts += [p.read_text() for p in (tmp_path / "state").rglob("ledger/*.json")]
    leaked = [s for s in secrets for t in texts if s in t]
    assert not leaked, leaked[:3]
