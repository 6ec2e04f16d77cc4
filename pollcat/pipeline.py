"""The delivery pipeline as plain functions: discover → prepare → poll → transfer → verify →
hooks → complete → report.

Prefect flows (`flows/`) and the CLI (`pollcat sweep`) both call these, so every step is testable
without Prefect. Each step is idempotent: the ledger, the target's manifest and TopCAT's status
say what is done, and a re-run after a crash continues without duplicating files or e-mails.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from pollcat.config import PipelineConfig
from pollcat.delivery import DeliveryPlan, plan_delivery, transfer_unless_delivered
from pollcat.errors import (
    DeliveryLocked,
    NotReady,
    PermanentError,
    PollcatError,
    PreparedIdUnknown,
    RestoreFailed,
    TransientError,
)
from pollcat.facility import FacilityClients
from pollcat.state import StateStore
from pollcat.topcat import Download
from pollcat.transfer import FileResult

log = logging.getLogger("pollcat.pipeline")


@dataclass
class Prepared:
    prepared_id: str
    ready: bool = False


@dataclass
class Outcome:
    """One row of the sweep report."""

    download_id: int
    user: str = ""
    transport: str = ""
    outcome: str = ""  # completed | waiting | retry | expired | skipped | locked
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
        d["MB/s"] = round(self.mb_per_s, 1)
        d["seconds"] = round(self.seconds, 2)
        return d


def backoff_delays(first: float = 1.0, cap: float = 30.0, jitter: float = 0.3):
    """Exponential backoff with jitter: 1, 2, 4, ... capped, each ±30 %."""
    delay = first
    while True:
        yield delay * random.uniform(1 - jitter, 1 + jitter)
        delay = min(cap, delay * 2)


class Pipeline:
    def __init__(self, cfg: PipelineConfig, clients: FacilityClients | None = None,
                 hooks: Sequence[Callable[[DeliveryPlan, list[FileResult]], None]] = ()):
        self.cfg = cfg
        self.clients = clients or FacilityClients(cfg.facility)
        self.state = StateStore(cfg.state_dir, cfg.facility.name)
        self.hooks = list(hooks)
        self._slots = threading.BoundedSemaphore(cfg.max_parallel_downloads)

    @property
    def topcat(self):
        return self.clients.topcat

    # ---------------------------------------------------------------- discover
    def discover(self) -> list[Download]:
        """RESTORING downloads of the routed transports, plus (single-level IDS) COMPLETE ones
        that pollcat has not delivered yet and that appeared after its first sweep."""
        found: dict[int, Download] = {}
        for transport in self.cfg.routes:
            for d in self.topcat.pending(transport, "RESTORING", page_size=self.cfg.page_size):
                found[d.id] = d
            if self.cfg.deliver_completed:
                for d in self.topcat.pending(transport, "COMPLETE",
                                             page_size=self.cfg.page_size):
                    if self._undelivered_single_level(d):
                        found[d.id] = d
        return [found[i] for i in sorted(found)]

    def _undelivered_single_level(self, d: Download) -> bool:
        if d.is_two_level:
            return False  # COMPLETE two-level downloads were completed by pollcat or an admin
        if self.state.get(d.id).get("outcome") in ("completed", "expired"):
            return False
        created = d.created_at or datetime.now(UTC)
        return created >= self.state.first_run - timedelta(minutes=5)

    # ---------------------------------------------------------------- prepare
    def prepare(self, d: Download) -> Prepared:
        """Make sure the download has a preparedId the IDS knows; kick the restore.

        404 (the IDS forgot the preparedId) → prepare again, through TopCAT's admin `prepare`
        when it has one, else with the functional account; "Restore failed" → `reset` and try
        again on a later sweep, giving up after `max_prepare_attempts`.
        """
        ids = self.clients.ids_for(d.transport)
        pid = self._current_prepared_id(d)
        if pid is None:
            pid = self._reprepare(d, "TopCAT holds no preparedId")
        try:
            return Prepared(pid, ready=ids.is_prepared(pid))
        except PreparedIdUnknown as exc:
            pid = self._reprepare(d, exc.message)
            return Prepared(pid, ready=False)
        except RestoreFailed as exc:
            rec = self.state.get(d.id)
            failures = int(rec.get("restore_failures", 0)) + 1
            self.state.update(d.id, restore_failures=failures, last_error=exc.message)
            if failures >= self.cfg.max_prepare_attempts:
                raise PermanentError(f"the IDS failed to restore the data {failures} times",
                                     download_id=d.id, service="IDS") from exc
            log.warning("download %s: restore failed (%d/%d); resetting", d.id, failures,
                        self.cfg.max_prepare_attempts)
            ids.reset(pid)
            return Prepared(pid, ready=False)

    def _current_prepared_id(self, d: Download) -> str | None:
        rec = self.state.get(d.id)
        if rec.get("prepared_id") and rec.get("prepared_from") == d.prepared_id:
            return rec["prepared_id"]
        return d.prepared_id

    def _reprepare(self, d: Download, why: str) -> str:
        rec = self.state.get(d.id)
        attempts = int(rec.get("prepare_attempts", 0)) + 1
        if attempts > self.cfg.max_prepare_attempts:
            raise PermanentError(f"gave up after {attempts - 1} preparations ({why})",
                                 download_id=d.id)
        self.state.update(d.id, prepare_attempts=attempts, last_error=why)
        log.warning("download %s: preparing again (%s), attempt %d", d.id, why, attempts)
        if self.topcat.prepare(d.id):
            fresh = self.topcat.get(d.id)
            if fresh and fresh.prepared_id and fresh.prepared_id != d.prepared_id:
                d.prepared_id = fresh.prepared_id
                return fresh.prepared_id
        sel = d.selection()
        pid = self.clients.ids_for(d.transport).prepare(
            self.clients.icat.session_id(), investigation_ids=sel["investigationIds"],
            dataset_ids=sel["datasetIds"], datafile_ids=sel["datafileIds"], zip=True)
        self.state.update(d.id, prepared_id=pid, prepared_from=d.prepared_id)
        return pid

    # ---------------------------------------------------------------- poll
    def poll(self, d: Download, prepared: Prepared, budget_s: float | None = None) -> bool:
        """Wait (sleeping, with backoff) until the IDS has restored the data, within a budget."""
        if prepared.ready:
            return True
        ids = self.clients.ids_for(d.transport)
        budget = self.cfg.poll_budget_s if budget_s is None else budget_s
        deadline = time.monotonic() + budget
        for delay in backoff_delays(first=min(1.0, max(budget / 8, 0.05))):
            if ids.is_prepared(prepared.prepared_id):
                prepared.ready = True
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(delay, remaining))
        return False

    # ---------------------------------------------------------------- deliver
    def deliver(self, d: Download, prepared_id: str,
                on_progress: Callable[[int, int], None] | None = None) -> Outcome:
        """Transfer, verify, hooks, complete — under the download's lock."""
        with self._slots, self.state.lock(d.id):
            t0 = time.monotonic()
            fresh = self.topcat.get(d.id)
            if fresh is None or fresh.is_deleted or fresh.status not in ("RESTORING", "COMPLETE"):
                why = "deleted" if fresh is None or fresh.is_deleted else \
                    f"status is now {fresh.status}"
                return self._outcome(d, "skipped", why)
            if fresh.status == "COMPLETE" and self.state.get(d.id).get("outcome") == "completed":
                return self._outcome(d, "skipped", "already completed")
            plan = plan_delivery(fresh, self.cfg.routes[fresh.transport], self.cfg.facility.name,
                                 self.clients, prepared_id)
            total = sum(j.size for j in plan.jobs)
            results = transfer_unless_delivered(plan, prepared_id, self.clients,
                                                self.cfg.facility.name, total, on_progress)
            for hook in self.hooks:
                hook(plan, results)
            self.state.update(d.id, outcome="delivered", path=plan.download_dir,
                              files=len(plan.jobs), bytes=total)
            self._complete(fresh, plan)
            out = self._outcome(d, "completed", "")
            out.files = len(plan.jobs)
            out.bytes = sum(r.fetched for r in results)
            out.skipped_files = sum(1 for r in results if r.skipped)
            out.path = self._display_path(plan)
            out.seconds = time.monotonic() - t0
            return out

    def _complete(self, d: Download, plan: DeliveryPlan) -> None:
        if d.status == "COMPLETE":  # single-level: TopCAT completed it at submit time
            self.state.update(d.id, outcome="completed")
            return
        custom = None
        if plan.target.custom_value:
            custom = plan.target.custom_value.format(
                path=self._display_path(plan), download=d.file_name, files=len(plan.jobs),
                user=d.user_name, download_id=d.id)
        self.topcat.set_status(d.id, "COMPLETE", custom)
        self.state.update(d.id, outcome="completed")

    def _display_path(self, plan: DeliveryPlan) -> str:
        base = plan.target.url.rstrip("/")
        return f"{base}/{plan.download_dir}"

    # ---------------------------------------------------------------- failures
    def fail(self, d: Download, exc: BaseException) -> Outcome:
        """Record a failure; permanent ones (and transient past the deadline) expire it."""
        if isinstance(exc, DeliveryLocked):
            return self._outcome(d, "locked", "another worker is delivering it")
        if isinstance(exc, NotReady):
            return self._outcome(d, "waiting", exc.message)
        if isinstance(exc, PollcatError):
            exc.with_context(download_id=d.id)
        reason = str(exc) if isinstance(exc, PollcatError) else f"{type(exc).__name__}: {exc}"
        rec = self.state.seen(d.id)
        first = datetime.fromisoformat(rec["first_seen"])
        overdue = datetime.now(UTC) - first > timedelta(hours=self.cfg.transient_deadline_h)
        if isinstance(exc, TransientError) and not overdue:
            self.state.update(d.id, last_error=reason)
            log.warning("download %s: will retry: %s", d.id, reason)
            return self._outcome(d, "retry", reason)
        if isinstance(exc, TransientError):
            reason = f"still failing after {self.cfg.transient_deadline_h} h: {reason}"
        elif not isinstance(exc, PermanentError):
            # a bug, not a verdict on the download: keep it for the next sweep
            self.state.update(d.id, last_error=reason)
            log.exception("download %s: unexpected error", d.id, exc_info=exc)
            return self._outcome(d, "retry", reason)
        return self.expire(d, reason)

    def settled(self, d: Download) -> Outcome | None:
        """A download pollcat already gave up on is not worked on again; TopCAT only still
        offers it if setting EXPIRED failed, so that call is what gets retried."""
        rec = self.state.get(d.id)
        if rec.get("outcome") != "expired":
            return None
        return self.expire(d, rec.get("reason") or "expired earlier by pollcat")

    def waiting(self, d: Download) -> Outcome:
        return self._outcome(d, "waiting", "the IDS is still restoring the data")

    def forget(self, download_id: int) -> None:
        """Clear pollcat's verdict and counters for a download (operator's force retry)."""
        self.state.update(download_id, outcome=None, reason=None, prepare_attempts=0,
                          restore_failures=0, first_seen=datetime.now(UTC).isoformat())

    def expire(self, d: Download, reason: str) -> Outcome:
        log.error("download %s: expiring: %s", d.id, reason)
        self.state.update(d.id, outcome="expired", reason=reason)
        try:
            self.topcat.set_status(d.id, "EXPIRED")
        except PollcatError as exc:
            log.error("download %s: could not set EXPIRED in TopCAT: %s", d.id, exc)
            return self._outcome(d, "retry", f"{reason}; and TopCAT refused EXPIRED: {exc}")
        return self._outcome(d, "expired", reason)

    def _outcome(self, d: Download, outcome: str, reason: str) -> Outcome:
        return Outcome(download_id=d.id, user=d.user_name, transport=d.transport,
                       outcome=outcome, reason=reason)

    # ---------------------------------------------------------------- one / all
    def run_one(self, d: Download, poll_budget_s: float | None = None,
                on_progress: Callable[[int, int], None] | None = None) -> Outcome:
        """prepare → poll → deliver for one download; never raises for the download's faults."""
        settled = self.settled(d)
        if settled is not None:
            return settled
        try:
            prepared = self.prepare(d)
            if not self.poll(d, prepared, poll_budget_s):
                return self.waiting(d)
            return self.deliver(d, prepared.prepared_id, on_progress)
        except Exception as exc:  # noqa: BLE001 - isolation: one download never sinks others
            return self.fail(d, exc)

    def sweep(self) -> list[Outcome]:
        """The CLI's sweep: the same steps the Prefect flow maps, on a plain thread pool."""
        downloads = self.discover()
        if not downloads:
            return []
        with ThreadPoolExecutor(max_workers=self.cfg.max_parallel_downloads) as pool:
            return list(pool.map(self.run_one, downloads))

    def download_by_id(self, download_id: int) -> Download:
        d = self.topcat.get(download_id)
        if d is None:
            raise PermanentError("TopCAT has no such download", download_id=download_id)
        if d.transport not in self.cfg.routes:
            raise PermanentError(f"transport {d.transport!r} is not routed to a target",
                                 download_id=download_id)
        return d
