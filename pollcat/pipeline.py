"""The per-download state machine: discover → check (prepare, isPrepared) → deliver (transfer,
verify, hooks, COMPLETE) → verdict. One orchestrator for the CLI, the flows and every worker.

`Pipeline.sweep` is the only loop: it checks every pending download once, hands the ready ones to
a delivery executor (a thread pool here, a Prefect task runner in the flows), and keeps checking
the rest, with backoff, until **one deadline for the whole sweep** (`poll_budget_seconds`). Nothing
here imports Prefect, so the whole machine runs and is tested without a server.

What a failure does to a download is decided in one place, `Pipeline.fail` (table in
docs/architecture.md): transient errors are retried by later sweeps until the transient deadline,
permanent ones expire the download, a target condition holds it, configuration errors stop the
sweep and touch nothing.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from pollcat import backoff, logsafe, maintenance, memory
from pollcat.config import PipelineConfig
from pollcat.delivery import (
    DeliveryPlan,
    HeldByOther,
    plan_delivery,
    transfer_unless_delivered,
)
from pollcat.delivery_s3 import deliver_to_object_store, is_object_store
from pollcat.errors import (
    AccountRefused,
    ConfigurationError,
    DeliveryLocked,
    NotReady,
    PermanentError,
    PermanentServiceError,
    PollcatError,
    PreparedIdUnknown,
    RestoreFailed,
    SessionError,
    TargetConnectionLost,
    TargetUnavailable,
    TransientError,
    VerificationError,
)
from pollcat.facility import FacilityClients
from pollcat.grants import GlobusGranter, grant_access
from pollcat.state import LedgerRecord, fingerprint, now_iso, open_state_store
from pollcat.states import DownloadStatus, OutcomeKind, Verdict
from pollcat.topcat import Download
from pollcat.transfer import FileResult

log = logging.getLogger("pollcat.pipeline")

#: What may go into a reason, the ledger or a report: no password, session id or preparedId,
#: whoever's message quoted it ("The preparedId ... is not known").
redact = logsafe.redact

#: How many times one delivery reconnects to a remote target whose connection broke, within
#: the same sweep (the part files make it continue where it stopped).
TARGET_RECONNECTS = 2

#: How many times one delivery is started again in the same sweep after the IDS or TopCAT
#: refused the functional account's session (the session expired mid-transfer): part files
#: make the restart cheap.
SESSION_RESTARTS = 1

#: How far TopCAT's commits may lag behind its id sequence, in minutes: a download created more
#: recently than this may still have a smaller id appear after it (see `discover`).
COMMIT_SKEW_MINUTES = 5
# Statuses discovery's bound may pass: settled for good, or PAUSED (an admin's resume of one is
# found by the periodic full scan).
_PASSABLE = frozenset({DownloadStatus.COMPLETE, DownloadStatus.EXPIRED, DownloadStatus.PAUSED})


@dataclass
class Prepared:
    """A preparedId the IDS knows, and whether its data was online at the last check."""

    prepared_id: str
    ready: bool = False


@dataclass
class Outcome:
    """One row of the sweep report."""

    download_id: int
    user: str = ""
    transport: str = ""
    outcome: OutcomeKind = OutcomeKind.SKIPPED
    reason: str = ""
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    path: str = ""
    skipped_files: int = 0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def row(self) -> dict:
        d = asdict(self)
        d["outcome"] = str(self.outcome)
        d["MB/s"] = round(self.mb_per_s, 1)
        d["seconds"] = round(self.seconds, 2)
        return d


#: Delivers one ready download somewhere (a thread, a Prefect task, another worker) and gives a
#: future of its outcome.
Submit = Callable[[Download, str], "Future[Outcome]"]

Hook = Callable[[DeliveryPlan, list[FileResult]], None]


class Pipeline:
    def __init__(self, cfg: PipelineConfig, clients: FacilityClients | None = None,
                 hooks: Sequence[Hook] = ()):
        memory.reuse_chunk_memory()  # once per process: chunks reuse freed heap memory
        self.cfg = cfg
        self.clients = clients or FacilityClients(cfg.facility)
        self.state = open_state_store(cfg.state_dir, cfg.facility.facility_name,
                                      cfg.ledger_url.get_secret_value() if cfg.ledger_url
                                      else None)
        self.hooks = list(hooks)
        self._held: dict[str, str] = {}  # target URL -> why it is held, for this sweep
        self._globus = GlobusGranter()  # one Globus login per target, kept for the sweep
        self._held_lock = threading.Lock()

    @property
    def facility_name(self) -> str:
        return self.cfg.facility.facility_name

    @property
    def topcat(self):
        return self.clients.topcat

    # ================================================================ discover
    def discover(self) -> list[Download]:
        """RESTORING downloads of the routed transports, plus (single-level IDS) COMPLETE ones
        that pollcat has not delivered yet and that appeared after its first sweep."""
        found: dict[int, Download] = {}
        for transport in self.cfg.routes:
            for d in self._discover_transport(transport):
                found[d.id] = d
        return [found[i] for i in sorted(found)]

    def _discover_transport(self, transport: str) -> list[Download]:
        """Ask TopCAT only for ids above a bound kept in the ledger: its table has no index but
        the primary key, so any status question reads the facility's whole history (100,000
        rows: a 21 ms scan, and 1,000 pages for single-level COMPLETE downloads) every sweep.

        The bound moves up over downloads whose fate is settled for good (EXPIRED; COMPLETE
        two-level, older than pollcat, or delivered or expired by pollcat) or PAUSED, and stops
        at the first one that still needs work (RESTORING, PREPARING, QUEUED, an undelivered
        single-level COMPLETE). It also stops at downloads created in the last few minutes:
        TopCAT's ids come from a sequence, and a transaction that took id N can commit after
        the one that took N+1, so a fresh id says nothing yet about the ids below it.

        Below the bound only an admin changes a download (Resume of a PAUSED one; a status set
        back to RESTORING to retry). Every `full_scan_minutes` discovery also asks for every
        RESTORING download, however old, so such a resume waits at most that long."""
        name = f"transport:{transport}"
        bound = self.state.scan_bound(name)
        rows = self.topcat.downloads(transport, page_size=self.cfg.page_size, after_id=bound)
        recent = datetime.now(UTC) - timedelta(minutes=COMMIT_SKEW_MINUTES)
        found, advancing, new_bound = [], True, bound
        for d in rows:  # id order
            if self._wanted(d):
                found.append(d)
                advancing = False
            elif (advancing and d.status in _PASSABLE and d.created_at is not None
                    and d.created_at < recent):
                new_bound = d.id
            else:
                advancing = False
        if bound is not None and self._full_scan_due(transport):
            found.extend(d for d in self.topcat.pending(
                transport, DownloadStatus.RESTORING, page_size=self.cfg.page_size)
                if d.id <= bound)
            self._full_scan_done(transport)
        elif bound is None:
            self._full_scan_done(transport)  # this sweep's question was a full scan
        if new_bound is not None and new_bound != bound:
            self.state.raise_scan_bound(name, new_bound)
        return found

    def _wanted(self, d: Download) -> bool:
        if d.status == DownloadStatus.RESTORING:
            return True
        return (self.cfg.deliver_completed and d.status == DownloadStatus.COMPLETE
                and self._undelivered_single_level(d))

    def _full_scan_due(self, transport: str) -> bool:
        """Whether the last unbounded RESTORING question (by any worker sharing the ledger)
        is `full_scan_minutes` old."""
        last = self.state.scan_bound(f"full-scan:{transport}")
        return last is None or time.time() - last >= self.cfg.full_scan_minutes * 60

    def _full_scan_done(self, transport: str) -> None:
        """Record it once answered (a TopCAT that failed it is asked again next sweep). The
        time is kept as a monotonic mark next to the bounds: epoch seconds only ever grow."""
        self.state.raise_scan_bound(f"full-scan:{transport}", int(time.time()))

    def _undelivered_single_level(self, d: Download) -> bool:
        if d.is_two_level:
            return False  # COMPLETE two-level downloads were completed by pollcat or an admin
        if self.state.get(d.id).verdict in (Verdict.COMPLETED, Verdict.EXPIRED):
            return False
        created = d.created_at or datetime.now(UTC)
        return created >= self.state.first_run - timedelta(minutes=COMMIT_SKEW_MINUTES)

    # ================================================================ check
    def check(self, d: Download, prepared: Prepared | None = None) -> Prepared | Outcome:
        """One readiness check: at most one `isPrepared`. The first check of a sweep also makes
        sure the IDS knows a preparedId (preparing again when it forgot it). Returns an Outcome
        when the download is settled or failed; raises ConfigurationError only."""
        try:
            if prepared is None:
                settled = self.settled(d)
                if settled is not None:
                    return settled
                self.state.seen(d.id)
                pid = self._current_prepared_id(d) or self._reprepare(d, "TopCAT holds no "
                                                                         "preparedId")
            else:
                pid = prepared.prepared_id
            logsafe.register_secret(pid)
            return self._is_prepared(d, pid)
        except ConfigurationError:
            raise
        except Exception as exc:  # noqa: BLE001 - isolation: one download never sinks others
            return self.fail(d, exc)

    def _is_prepared(self, d: Download, pid: str) -> Prepared:
        ids = self.clients.ids_for(d.transport)
        try:
            return Prepared(pid, ready=ids.is_prepared(pid))
        except PreparedIdUnknown as exc:
            return Prepared(self._reprepare(d, exc.message), ready=False)
        except RestoreFailed as exc:
            rec = self.state.get(d.id)
            failures = rec.restore_failures + 1
            self.state.update(d.id, restore_failures=failures, last_error=redact(exc.message))
            if failures >= self.cfg.max_prepare_attempts:
                raise PermanentError(f"the IDS failed to restore the data {failures} times",
                                     download_id=d.id, service="IDS") from exc
            log.warning("download %s: restore failed (%d/%d); resetting", d.id, failures,
                        self.cfg.max_prepare_attempts)
            ids.reset(pid)
            return Prepared(pid, ready=False)

    def _current_prepared_id(self, d: Download) -> str | None:
        """pollcat's own preparedId while TopCAT still holds the one it replaced."""
        rec = self.state.get(d.id)
        own = self.state.own_prepared_id(d.id)
        if own and rec.prepared_from == fingerprint(d.prepared_id):
            return own
        return d.prepared_id

    def _reprepare(self, d: Download, why: str) -> str:
        logsafe.register_secret(d.prepared_id)
        rec = self.state.get(d.id)
        attempts = rec.prepare_attempts + 1
        if attempts > self.cfg.max_prepare_attempts:
            raise PermanentError(f"gave up after {attempts - 1} preparations ({why})",
                                 download_id=d.id)
        log.warning("download %s: preparing again (%s), attempt %d", d.id, redact(why), attempts)
        try:
            pid = self._prepare_once(d)
        except TransientError as exc:
            # a prepare of a large selection can outlive the HTTP timeout; TopCAT (or the IDS)
            # may still finish it, and the next sweep re-reads the download: not an attempt
            log.warning("download %s: preparing did not answer in time (%s); the next sweep "
                        "looks again, attempt not counted", d.id, redact(str(exc)))
            raise
        self.state.update(d.id, prepare_attempts=attempts, last_error=redact(why))
        return pid

    def _prepare_once(self, d: Download) -> str:
        """TopCAT's admin prepare where it has one (3.1+), else `prepareData` with the
        functional account, whose preparedId pollcat then keeps (apart from the ledger)."""
        if self.topcat.prepare(d.id):
            fresh = self.topcat.get(d.id)
            if fresh and fresh.prepared_id and fresh.prepared_id != d.prepared_id:
                d.prepared_id = fresh.prepared_id
                return fresh.prepared_id
        sel = d.selection()
        pid = self.clients.ids_for(d.transport).prepare(
            self.clients.icat.session_id(), investigation_ids=sel["investigationIds"],
            dataset_ids=sel["datasetIds"], datafile_ids=sel["datafileIds"], zip=True)
        self.state.keep_prepared_id(d.id, pid)
        self.state.update(d.id, prepared_from=fingerprint(d.prepared_id))
        return pid

    # ================================================================ deliver
    def deliver(self, d: Download, prepared_id: str,
                on_progress: Callable[[int, int], None] | None = None) -> Outcome:
        """Transfer, verify, hooks, COMPLETE under the download's lock. Never raises for the
        download's own faults (they become its outcome); raises ConfigurationError."""
        held = self._held_reason(d)
        if held:
            return self._outcome(d, OutcomeKind.HELD, held)
        with self.state.lock(d.id) as mine:
            if not mine:
                return self._outcome(d, OutcomeKind.LOCKED, "another worker is delivering it")
            token, reconnects, restart = uuid.uuid4().hex, 0, 0
            while True:
                try:
                    return self._deliver_locked(d, prepared_id, on_progress, token)
                except TargetConnectionLost as exc:
                    if reconnects == TARGET_RECONNECTS:
                        return self.fail(d, exc)
                    reconnects += 1
                    log.warning("download %s: %s; reconnecting (%d/%d)", d.id,
                                redact(exc.message), reconnects, TARGET_RECONNECTS)
                except (SessionError, PermanentServiceError) as exc:
                    if not _refused_session(exc):
                        return self.fail(d, exc)
                    if restart == SESSION_RESTARTS:
                        raise AccountRefused(
                            f"{exc.service} refused the functional account "
                            f"{self.clients.icat.user_name or ''} even after logging in again: "
                            f"{redact(exc.message)}", service=exc.service, status=exc.status,
                            code=exc.code) from None
                    log.warning("download %s: %s refused the session; logging in again and "
                                "continuing", d.id, exc.service)
                    self.clients.icat.invalidate()
                    restart += 1
                except ConfigurationError:
                    raise
                except DeliveryLocked as exc:
                    return self._outcome(d, OutcomeKind.LOCKED, redact(exc.message))
                except NotReady as exc:
                    return self.waiting(d, redact(exc.message))
                except Exception as exc:  # noqa: BLE001 - isolation
                    return self.fail(d, exc)
        raise AssertionError("unreachable")

    def _deliver_locked(self, d: Download, prepared_id: str,
                        on_progress: Callable[[int, int], None] | None,
                        token: str | None = None) -> Outcome:
        t0 = time.monotonic()
        fresh = self.topcat.get(d.id)
        if fresh is None or fresh.is_deleted or fresh.status not in (
                DownloadStatus.RESTORING, DownloadStatus.COMPLETE):
            why = "deleted" if fresh is None or fresh.is_deleted else \
                f"status is now {fresh.status}"
            return self._outcome(d, OutcomeKind.SKIPPED, why)
        if fresh.status == DownloadStatus.COMPLETE and \
                self.state.get(d.id).verdict == Verdict.COMPLETED:
            return self._outcome(d, OutcomeKind.SKIPPED, "already completed")
        target = self.cfg.routes[fresh.transport]
        if is_object_store(target):
            plan, results = deliver_to_object_store(
                fresh, target, self.facility_name, self.clients, prepared_id, on_progress,
                on_plan=lambda p: self._note_path(fresh, p.download_dir))
            link = plan.link
            total = sum(j.size for j in plan.jobs)
        else:
            plan = plan_delivery(fresh, target, self.facility_name, self.clients, prepared_id,
                                 token=token)
            if isinstance(plan, HeldByOther):  # a worker on another host writes it right now
                return self._outcome(d, OutcomeKind.LOCKED, plan.reason)
            self._note_path(fresh, plan.download_dir)
            total = sum(j.size for j in plan.jobs)
            results = transfer_unless_delivered(plan, prepared_id, self.clients,
                                                self.facility_name, total, on_progress)
            # before COMPLETE: never announce data the user cannot read
            grant_access(self.state, fresh, plan)
            link = self._globus.grant(self.state, fresh, plan)
        for hook in self.hooks:
            hook(plan, results)
        self.state.update(d.id, verdict=Verdict.DELIVERED, path=plan.download_dir,
                          transport=fresh.transport, files=len(plan.jobs), bytes=total,
                          mismatch_count=0, mismatch_signature="",
                          delivered_at=self.state.get(d.id).delivered_at or now_iso())
        self._complete(fresh, plan, link)
        out = self._outcome(d, OutcomeKind.COMPLETED, "")
        out.files = len(plan.jobs)
        out.bytes = sum(r.fetched for r in results)
        out.skipped_files = sum(1 for r in results if r.skipped)
        out.path = self._display_path(plan)
        out.seconds = time.monotonic() - t0
        return out

    def _note_path(self, d: Download, download_dir: str) -> None:
        """The download's directory in the ledger as soon as it is claimed (before any byte):
        a download that then expires has its partly placed files found by retention."""
        self.state.update(d.id, path=download_dir, transport=d.transport)

    def _complete(self, d: Download, plan: DeliveryPlan, link: str | None = None) -> None:
        if d.status == DownloadStatus.COMPLETE:  # single-level: TopCAT completed it at submit
            self.state.update(d.id, verdict=Verdict.COMPLETED)
            return
        custom = link  # a Globus target's folder link, unless the target says otherwise
        if plan.target.custom_value:
            custom = plan.target.custom_value.format(
                path=self._display_path(plan), download=d.file_name, files=len(plan.jobs),
                user=d.user_name, download_id=d.id, link=link or "")
        self.topcat.set_status(d.id, DownloadStatus.COMPLETE, custom)
        self.state.update(d.id, verdict=Verdict.COMPLETED)

    def _display_path(self, plan: DeliveryPlan) -> str:
        base = plan.target.url.rstrip("/")
        return f"{base}/{plan.download_dir}"

    def _held_reason(self, d: Download) -> str | None:
        target = self.cfg.routes.get(d.transport)
        with self._held_lock:
            return self._held.get(target.url) if target else None

    def _hold_target(self, d: Download, reason: str) -> None:
        target = self.cfg.routes.get(d.transport)
        if target:
            with self._held_lock:
                self._held.setdefault(target.url, f"target held: {reason}")

    # ================================================================ verdicts
    def fail(self, d: Download, exc: BaseException) -> Outcome:
        """The one place that decides what a failure does to a download.

        ConfigurationError is not handled here: it stops the sweep before any download is
        touched (callers let it through)."""
        if isinstance(exc, ConfigurationError):
            raise exc
        if isinstance(exc, NotReady):
            return self.waiting(d, redact(exc.message))
        if isinstance(exc, PollcatError):
            exc.with_context(download_id=d.id)
        reason = redact(str(exc) if isinstance(exc, PollcatError)
                        else f"{type(exc).__name__}: {exc}")
        if isinstance(exc, TargetUnavailable):
            self._hold_target(d, reason)
            self.state.update(d.id, last_error=reason)
            log.warning("download %s: held: %s", d.id, reason)
            return self._outcome(d, OutcomeKind.HELD, reason)
        rec = self.state.seen(d.id)
        if isinstance(exc, VerificationError):
            rec = self._count_mismatch(d, exc, reason)
            if rec.mismatch_count >= self.cfg.max_identical_mismatches:
                return self.expire(d, f"the IDS serves bytes that do not match ICAT (the same "
                                      f"result {rec.mismatch_count} times): {reason}")
        if isinstance(exc, PermanentError):
            return self.expire(d, reason)
        if not isinstance(exc, TransientError):
            # not a known failure: keep the traceback for whoever fixes it, and let it fall under
            # the same deadline as transient ones so that nothing is retried forever
            log.error("download %s: unexpected error", d.id, exc_info=exc)
        first = datetime.fromisoformat(rec.first_seen)
        if datetime.now(UTC) - first > timedelta(hours=self.cfg.transient_deadline_hours):
            return self.expire(d, f"still failing after {self.cfg.transient_deadline_hours:g} h: "
                                  f"{reason}")
        self.state.update(d.id, last_error=reason)
        log.warning("download %s: will retry: %s", d.id, reason)
        return self._outcome(d, OutcomeKind.RETRY, reason)

    def _count_mismatch(self, d: Download, exc: VerificationError, reason: str) -> LedgerRecord:
        rec = self.state.get(d.id)
        signature = f"{exc.datafile}: {exc.message}"
        count = rec.mismatch_count + 1 if rec.mismatch_signature == signature else 1
        return self.state.update(d.id, mismatch_signature=signature, mismatch_count=count,
                                 last_error=reason)

    def settled(self, d: Download) -> Outcome | None:
        """A download pollcat gave up on is not worked on again, unless an admin resumed it.

        TopCAT still offering a download pollcat expired means one of two things: TopCAT
        refused EXPIRED (then that call is retried), or an admin resumed the download after
        TopCAT had accepted EXPIRED (then it is a fresh attempt with fresh counters)."""
        rec = self.state.get(d.id)
        if rec.verdict != Verdict.EXPIRED:
            return None
        if rec.expired_in_topcat and d.status in (DownloadStatus.RESTORING,
                                                  DownloadStatus.PREPARING):
            log.info("download %s: resumed in TopCAT after pollcat expired it; a fresh attempt",
                     d.id)
            self.forget(d.id)
            return None
        return self.expire(d, rec.reason or "expired earlier by pollcat")

    def waiting(self, d: Download, reason: str = "the IDS is still restoring the data"
                ) -> Outcome:
        """Not ready yet; past the waiting deadline (a restore that never finishes, data the
        IDS keeps evicting) the wait ends with a verdict an operator sees."""
        rec = self.state.seen(d.id)
        waited = datetime.now(UTC) - datetime.fromisoformat(rec.first_seen)
        if waited > timedelta(hours=self.cfg.waiting_deadline_hours):
            return self.expire(d, f"the IDS did not have the data online within "
                                  f"{self.cfg.waiting_deadline_hours:g} h ({reason})")
        return self._outcome(d, OutcomeKind.WAITING, reason)

    def forget(self, download_id: int) -> None:
        """Clear pollcat's verdict and counters for a download (an admin's resume, or an
        operator's force retry)."""
        self.state.update(download_id, verdict=None, reason="", expired_in_topcat=False,
                          prepare_attempts=0, restore_failures=0, mismatch_count=0,
                          mismatch_signature="", last_error="", expired_at="",
                          first_seen=now_iso())

    def expire(self, d: Download, reason: str) -> Outcome:
        reason = redact(reason)
        log.error("download %s: expiring: %s", d.id, reason)
        self.state.update(d.id, verdict=Verdict.EXPIRED, reason=reason, expired_in_topcat=False,
                          expired_at=lambda r: r.expired_at or now_iso())
        try:
            self.topcat.set_status(d.id, DownloadStatus.EXPIRED)
        except ConfigurationError:
            raise
        except PollcatError as exc:
            log.error("download %s: could not set EXPIRED in TopCAT: %s", d.id, exc)
            return self._outcome(d, OutcomeKind.RETRY,
                                 f"{reason}; and TopCAT refused EXPIRED: {redact(str(exc))}")
        self.state.update(d.id, expired_in_topcat=True)
        return self._outcome(d, OutcomeKind.EXPIRED, reason)

    def _outcome(self, d: Download, kind: OutcomeKind, reason: str) -> Outcome:
        return Outcome(download_id=d.id, user=d.user_name, transport=d.transport,
                       outcome=kind, reason=redact(reason))

    # ================================================================ the orchestrator
    def sweep(self, downloads: Sequence[Download] | None = None, *,
              submit: Submit | None = None, budget_s: float | None = None) -> list[Outcome]:
        """Check every download once, deliver the ready ones as they become ready, and keep
        checking the others until the sweep's single deadline. `submit` hands a ready download
        to an executor (default: a local thread pool of `max_parallel_downloads`)."""
        if downloads is None:
            downloads = self.discover()
        if not downloads:
            return []
        with self._held_lock:
            self._held.clear()
        budget = self.cfg.poll_budget_seconds if budget_s is None else budget_s
        deadline = time.monotonic() + budget
        with ThreadPoolExecutor(max_workers=self.cfg.max_parallel_downloads,
                                thread_name_prefix="deliver") as local:
            if submit is None:
                def submit(d: Download, pid: str) -> Future[Outcome]:
                    return local.submit(contextvars.copy_context().run, self.deliver, d, pid)
            outcomes = _Sweep(self, list(downloads), submit, deadline).run()
        self._remember(outcomes)
        return outcomes

    def _remember(self, outcomes: Sequence[Outcome]) -> None:
        """Keep each download's latest outcome and since when it holds (for the status an
        operator reads: "waiting since Monday"); written only when it changes."""
        for o in outcomes:
            rec = self.state.get(o.download_id)
            if rec.outcome != o.outcome:
                self.state.update(o.download_id, outcome=str(o.outcome),
                                  outcome_since=now_iso())

    # ================================================================ maintenance
    def cleanup(self, *, dry_run: bool = False, out: Callable[[str], None] = print) -> int:
        """Retention (`pollcat cleanup`): see `pollcat.maintenance.cleanup`."""
        return maintenance.cleanup(self.cfg, self.state, self._globus, dry_run=dry_run, out=out)

    def verify(self, out: Callable[[str], None] = print) -> int:
        """The verifying pass (`pollcat verify`): see `pollcat.maintenance.verify`."""
        return maintenance.verify(self.cfg, self.state, out=out)

    def status_rows(self, limit: int = 1000) -> list[dict]:
        """Every download pollcat knows, newest first: what it is doing and why."""
        return maintenance.status_rows(self.state, limit)

    def run_one(self, d: Download, budget_s: float | None = None,
                submit: Submit | None = None) -> Outcome:
        """The same machine for one download (the `deliver` flow, an operator's retry)."""
        return self.sweep([d], submit=submit, budget_s=budget_s)[0]

    def download_by_id(self, download_id: int) -> Download:
        d = self.topcat.get(download_id)
        if d is None:
            raise PermanentError("TopCAT has no such download", download_id=download_id)
        if d.transport not in self.cfg.routes:
            raise PermanentError(f"transport {d.transport!r} is not routed to a target",
                                 download_id=download_id)
        return d


class _Sweep:
    """One sweep's bookkeeping: which downloads are pending, delivering, done."""

    def __init__(self, pipeline: Pipeline, downloads: list[Download], submit: Submit,
                 deadline: float):
        self.p = pipeline
        self.downloads = downloads
        self.submit = submit
        self.deadline = deadline
        self.outcomes: dict[int, Outcome] = {}
        self.pending: dict[int, tuple[Download, Prepared | None]] = {
            d.id: (d, None) for d in downloads}
        self.delivering: dict[int, Future[Outcome]] = {}
        self.stop: ConfigurationError | None = None

    def run(self) -> list[Outcome]:
        delays = backoff.jittered(first=min(1.0, max((self.deadline - time.monotonic()) / 8,
                                                   0.05)))
        workers = max(1, min(self.p.cfg.check_concurrency, len(self.pending)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="check") as checks:
            while self.pending and self.stop is None:
                # each check runs in a copy of this thread's context, so that log records of
                # a flow run (Prefect keeps the run in a contextvar) stay attached to it
                batch = list(self.pending.values())
                futures = [checks.submit(contextvars.copy_context().run, self._check, item)
                           for item in batch]
                for (d, _), future in zip(batch, futures, strict=True):
                    self._take(d, future.result())
                remaining = self.deadline - time.monotonic()
                if not self.pending or self.stop is not None or remaining <= 0:
                    break
                time.sleep(min(next(delays), remaining))
        for d, _ in self.pending.values():
            self.outcomes[d.id] = self.p.waiting(d)
        for download_id, future in self.delivering.items():
            try:
                self.outcomes[download_id] = future.result()
            except ConfigurationError as exc:
                self.stop = self.stop or exc
        if self.stop is not None:
            raise self.stop
        return [self.outcomes[d.id] for d in self.downloads if d.id in self.outcomes]

    def _check(self, item: tuple[Download, Prepared | None]) -> Prepared | Outcome | Exception:
        d, prepared = item
        try:
            return self.p.check(d, prepared)
        except ConfigurationError as exc:
            return exc

    def _take(self, d: Download, result: Prepared | Outcome | Exception) -> None:
        if isinstance(result, ConfigurationError):
            self.stop = self.stop or result
        elif isinstance(result, Outcome):
            self.outcomes[d.id] = result
            self.pending.pop(d.id, None)
        elif isinstance(result, Prepared) and result.ready:
            self.pending.pop(d.id, None)
            self.delivering[d.id] = self.submit(d, result.prepared_id)
        elif isinstance(result, Prepared):
            self.pending[d.id] = (d, result)


def _refused_session(exc: PollcatError) -> bool:
    """A 403 from a call made with the functional account's session: the session expired (log
    in again) or the account lacks rights (a configuration problem), never the user's fault."""
    return isinstance(exc, SessionError) or (
        isinstance(exc, PermanentServiceError) and exc.status == 403)
