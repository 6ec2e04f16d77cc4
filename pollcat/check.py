"""`pollcat check`: catch a mistake before a run fails on it.

Reaches ICAT, every IDS and TopCAT with the functional account, tells apart the three
privileges a deployment grants separately (ICAT read rules, IDS `rootUserNames`, TopCAT
`adminUserNames`) and names the one missing, and checks that each routed target is reachable,
writable (by creating and removing a probe file pollcat names itself) and has free space.
One line per check; nothing about any download is changed.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum

from fsspec.core import url_to_fs

from pollcat import logsafe
from pollcat.config import PipelineConfig, TargetConfig
from pollcat.errors import PollcatError
from pollcat.facility import FacilityClients
from pollcat.targetfs import open_target
from pollcat.targetfs.base import is_local

#: Below this much free space a target is reported as a warning.
LOW_SPACE_BYTES = 10 * 1024**3


class Verdict(StrEnum):
    OK = "ok"
    WARN = "warn"  # works, but something an operator should know
    FAIL = "fail"  # pollcat cannot deliver until this is fixed


@dataclass(frozen=True)
class CheckResult:
    what: str
    verdict: Verdict
    detail: str

    def line(self) -> str:
        return f"{self.verdict.upper():4}  {self.what:28}  {logsafe.redact(self.detail)}"


def _run(what: str, fn: Callable[[], str | tuple[Verdict, str]]) -> CheckResult:
    try:
        out = fn()
    except PollcatError as exc:
        return CheckResult(what, Verdict.FAIL, str(exc))
    except Exception as exc:  # noqa: BLE001 - a check reports, it never crashes
        return CheckResult(what, Verdict.FAIL, f"{type(exc).__name__}: {exc}")
    if isinstance(out, tuple):
        return CheckResult(what, out[0], out[1])
    return CheckResult(what, Verdict.OK, out)


def run_checks(cfg: PipelineConfig, clients: FacilityClients | None = None
               ) -> list[CheckResult]:
    clients = clients or FacilityClients(cfg.facility)
    results = list(_service_checks(cfg, clients))
    for transport, target in cfg.routes.items():
        results.extend(_target_checks(transport, target))
    return results


def _service_checks(cfg: PipelineConfig, clients: FacilityClients) -> Iterator[CheckResult]:
    login = _run("icat login", lambda: f"logged in as {_login(clients)}")
    yield login
    if login.verdict is Verdict.FAIL:
        return
    yield _run("icat read rules", lambda: _icat_read(clients))
    seen: set[str] = set()
    for transport in cfg.routes:
        url = cfg.facility.ids_url_for(transport)
        if url in seen:
            continue
        seen.add(url)
        ids = clients.ids_for(transport)
        yield _run(f"ids {url}", lambda ids=ids: f"IDS {ids.version()}, "
                   f"{'two' if ids.is_two_level() else 'single'}-level storage")
        yield _run(f"ids root ({url})", lambda ids=ids: _ids_root(ids, clients))
    yield _run("topcat admin", lambda: _topcat_admin(cfg, clients))


def _login(clients: FacilityClients) -> str:
    clients.icat.session_id()
    return clients.icat.user_name or "?"


def _icat_read(clients: FacilityClients) -> str | tuple[Verdict, str]:
    rows = clients.icat.search("SELECT COUNT(df) FROM Datafile df")
    count = int(rows[0]) if rows else 0
    if count == 0:
        return Verdict.WARN, ("the functional account can read no datafile in ICAT: the "
                              "'direct' and 'storage' sources will fail (ICAT read rules)")
    return f"reads {count} datafile(s)"


def _ids_root(ids, clients: FacilityClients) -> str | tuple[Verdict, str]:
    """Not needed to deliver; reported so a facility knows which privileges it granted."""
    try:
        ids.service_status(clients.icat.session_id())
    except PollcatError as exc:
        if exc.status == 403:
            return Verdict.OK, "not in rootUserNames (not needed by pollcat)"
        raise
    return "in rootUserNames (more than pollcat needs)"


def _topcat_admin(cfg: PipelineConfig, clients: FacilityClients) -> str:
    clients.topcat.get(0)  # an admin read; a non-admin gets 403 → ConfigurationError
    return f"{clients.icat.user_name} is in TopCAT's adminUserNames for " \
           f"{cfg.facility.facility_name}"


def _target_checks(transport: str, target: TargetConfig) -> Iterator[CheckResult]:
    name = f"target {transport}"
    state: dict = {}

    def reachable() -> str:
        fs, root = url_to_fs(target.url, **target.storage_options)
        root = root.rstrip("/") or "/"
        state["fs"], state["root"] = fs, root
        if not fs.isdir(root):
            raise PollcatError(f"{target.url}: the target root is not a directory")
        return f"{target.url} is reachable"

    first = _run(f"{name} reachable", reachable)
    yield first
    if first.verdict is Verdict.FAIL:
        return
    yield _run(f"{name} writable", lambda: _writable(state["fs"], state["root"]))
    yield _run(f"{name} free space", lambda: _free_space(state["fs"], state["root"]))


def _writable(fs, root: str) -> str:
    name = f".pollcat-check-{uuid.uuid4().hex}"
    if is_local(fs):  # through the same no-follow layer deliveries use
        target = open_target(fs, root)
        target.create(name).close()
        target.remove(name)
    else:  # object stores and the like: a plain put and delete
        probe = f"{root.rstrip('/')}/{name}"
        fs.pipe_file(probe, b"pollcat check")
        fs.rm_file(probe)
    return "created and removed a probe file"


def _free_space(fs, root: str) -> str | tuple[Verdict, str]:
    if not is_local(fs):
        return Verdict.OK, "free space not measurable over this protocol"
    st = os.statvfs(root)
    free = st.f_bavail * st.f_frsize
    text = f"{free / 1024**3:.1f} GiB free"
    return (Verdict.WARN, text + " (low)") if free < LOW_SPACE_BYTES else text


def format_results(results: list[CheckResult]) -> str:
    return "\n".join(r.line() for r in results)


def all_ok(results: list[CheckResult]) -> bool:
    return all(r.verdict is not Verdict.FAIL for r in results)
