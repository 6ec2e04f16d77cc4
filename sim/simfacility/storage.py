"""The IDS's two-level storage: main storage (the data dir) in front of a simulated archive.

Why it exists: a real two-level IDS answers ``isPrepared`` false and ``getData`` 503 until its
archive plugin has copied data back to main storage, and pollcat's whole polling design rests
on that lifecycle (wire reference §1.3). This module reproduces it with real files on disk.

Model:

- The *storage unit* is a dataset or a datafile (``storage_unit`` in the scenario), as the IDS's
  ``storageUnit`` property. Online checks, restores and failure flags are per unit.
- Two-level: every unit starts ARCHIVED (nothing on disk). ``request_restore`` marks a unit
  RESTORING and schedules its completion ``restore_latency_s + unit_bytes / restore_bytes_per_s``
  later. The unit's files are written to main storage straight away by a worker thread, so the
  configured time is the restore time even for GiB-sized units; the unit only turns ONLINE once
  both the deadline has passed and its files are on disk.
- A restore armed to fail (``fail_next_restores``, the ``fail_restore`` state fault) ends with the
  unit ARCHIVED and a "restore failed" flag set, as the IDS's ``FiniteStateMachine.recordFailure``
  does. ``clear_failures`` (prepareData, reset) and any later successful restore clear it.
- ``archive`` takes a unit offline at once and removes its files (the IDS defers this to its
  queue; the delay is not observable through the wire API beyond getServiceStatus).
- Single-level: every unit is always ONLINE; restore/archive are not offered (the IDS answers
  501 before reaching storage).
- A finite cache (scenario `ids.cache`): the IDS's Tidier checks the size of main storage every
  `check_interval_s` and whenever a restore completes (a Tidier that checks often, so that
  "more online than the cache holds" is never observable); above `start_archiving_bytes` it
  archives the units that came online first until at most `stop_archiving_bytes` remain. It
  does not care whether a unit belongs to a preparedId nobody has fetched yet (the real
  Tidier does not know); only a unit held by a running getData (SHARED lock) is skipped until
  the lock is released.

Jobs that touch one unit's files always go to the same worker thread, so a restore and an
archive of the same unit can never race on disk.
"""

from __future__ import annotations

import heapq
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from simfacility.model import Datafile, dematerialize, materialize

if TYPE_CHECKING:
    from simfacility.facility import SimFacility

log = logging.getLogger("simfacility.storage")

ONLINE = "ONLINE"
RESTORING = "RESTORING"
ARCHIVED = "ARCHIVED"
WORKERS = 4

Unit = tuple[str, int]  # ("dataset", dsId) or ("datafile", dfId)


class DfRef(Protocol):
    """Anything naming a datafile and its dataset (a model Datafile or a prepared DfInfo)."""

    id: int
    dataset_id: int


@dataclass
class _Restore:
    ticket: int
    due: float
    files_ready: bool = False
    due_passed: bool = False


@dataclass
class _FailPlan:
    remaining: int
    datafile_ids: frozenset[int] | None
    dataset_ids: frozenset[int] | None


class Storage:
    """Per-unit ONLINE / RESTORING / ARCHIVED state, restore scheduling and failure flags."""

    def __init__(self, fac: SimFacility):
        self.fac = fac
        self.store = fac.store
        cfg = fac.config
        self.two_level = cfg.two_level
        self.by_dataset = cfg.storage_unit == "dataset"
        self.latency_s = cfg.restore_latency_s
        self.bytes_per_s = cfg.restore_bytes_per_s
        self._cond = threading.Condition()
        self._online: set[Unit] = set()
        self._restoring: dict[Unit, _Restore] = {}
        self._failed: set[Unit] = set()
        self._online_since: dict[Unit, float] = {}
        self.cache = cfg.ids_cache
        self.evictions = 0
        self._heap: list[tuple[float, int, Unit]] = []
        self._plans: list[_FailPlan] = []
        self._next_ticket = 0
        self._shared_locks: Counter[int] = Counter()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._queues: list[queue.Queue] = [queue.Queue() for _ in range(WORKERS)]

    # -- lifecycle --
    def start(self) -> None:
        """Start the scheduler and the file workers (daemons: a test never waits on them)."""
        if not self.two_level or self._threads:
            return
        self._stopping = False
        self._threads.append(threading.Thread(target=self._schedule_loop, daemon=True,
                                              name="sim-ids-restore-scheduler"))
        if self.cache.start_archiving_bytes is not None:
            self._threads.append(threading.Thread(target=self._tidier_loop, daemon=True,
                                                  name="sim-ids-tidier"))
        for i, q in enumerate(self._queues):
            self._threads.append(threading.Thread(target=self._worker_loop, args=(q,),
                                                  daemon=True, name=f"sim-ids-restore-{i}"))
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        """Stop promptly: wake the scheduler, poison the workers, wait briefly for them."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for q in self._queues:
            q.put(None)
        for t in self._threads:
            t.join(timeout=2.0)
        self._threads = []

    # -- units --
    def unit_of(self, df: DfRef) -> Unit:
        return ("dataset", df.dataset_id) if self.by_dataset else ("datafile", df.id)

    def units_of(self, datafiles: Iterable[DfRef]) -> list[Unit]:
        """Distinct units in first-seen order (dict keeps order, set would not)."""
        return list(dict.fromkeys(self.unit_of(df) for df in datafiles))

    def _unit_files(self, unit: Unit) -> list[Datafile]:
        kind, uid = unit
        if kind == "dataset":
            if uid not in self.store.datasets:
                return []
            return [df for df in self.store.live_datafiles(uid) if df.location is not None]
        df = self.store.datafiles.get(uid)
        return [df] if df is not None and not df.deleted and df.location is not None else []

    def _unit_bytes(self, unit: Unit) -> int:
        return sum(df.size for df in self._unit_files(unit))

    # -- queries --
    def is_online(self, df: DfRef) -> bool:
        if not self.two_level:
            return True
        with self._cond:
            return self.unit_of(df) in self._online

    def offline_units(self, datafiles: Iterable[DfRef]) -> list[Unit]:
        """Units of the selection not on main storage (restoring ones included)."""
        if not self.two_level:
            return []
        units = self.units_of(datafiles)
        with self._cond:
            return [u for u in units if u not in self._online]

    def status(self, datafiles: Iterable[DfRef]) -> str:
        """IdsBean.getStatus's loop: ARCHIVED wins at once, then RESTORING, else ONLINE."""
        if not self.two_level:
            return ONLINE
        result = ONLINE
        units = self.units_of(datafiles)
        with self._cond:
            for u in units:
                if u in self._online:
                    continue
                if u not in self._restoring:
                    return ARCHIVED
                result = RESTORING
        return result

    def has_failed(self, datafiles: Iterable[DfRef]) -> bool:
        if not self.two_level:
            return False
        with self._cond:
            if not self._failed:
                return False
            return any(u in self._failed for u in self.units_of(datafiles))

    def clear_failures(self, datafiles: Iterable[DfRef]) -> None:
        if not self.two_level:
            return
        units = self.units_of(datafiles)
        with self._cond:
            self._failed.difference_update(units)

    # -- operations --
    def request_restore(self, datafiles: Iterable[DfRef]) -> int:
        """Queue a restore for every offline unit not already restoring; returns how many."""
        if not self.two_level:
            return 0
        return self.restore_units(self.units_of(datafiles))

    def restore_units(self, units: Iterable[Unit]) -> int:
        queued: list[tuple[Unit, int]] = []
        now = time.monotonic()
        with self._cond:
            for u in units:
                if u in self._online or u in self._restoring:
                    continue
                self._next_ticket += 1
                due = now + self.latency_s + self._unit_bytes(u) / max(self.bytes_per_s, 1.0)
                self._restoring[u] = _Restore(self._next_ticket, due)
                heapq.heappush(self._heap, (due, self._next_ticket, u))
                queued.append((u, self._next_ticket))
            if queued:
                self._cond.notify_all()
        for u, ticket in queued:
            self._queue_for(u).put(("restore", u, ticket))
        return len(queued)

    def archive(self, datafiles: Iterable[DfRef]) -> int:
        """Take units offline (cancelling any restore) and drop their files from disk."""
        if not self.two_level:
            return 0
        units = self.units_of(datafiles)
        self._archive_units(units)
        return len(units)

    def _archive_units(self, units: list[Unit]) -> None:
        with self._cond:
            for u in units:
                self._online.discard(u)
                self._online_since.pop(u, None)
                self._restoring.pop(u, None)
        for u in units:
            self._queue_for(u).put(("archive", u, 0))

    # -- the Tidier --
    def online_bytes(self) -> int:
        """Bytes of the units on main storage (true sizes: what the disk holds)."""
        with self._cond:
            units = list(self._online)
        return sum(self._unit_bytes(u) for u in units)

    def tidy(self) -> list[Unit]:
        """One Tidier size check: archive oldest-online units while above the start level.

        Returns the units archived. Units under a SHARED lock (a getData streaming them) are
        skipped, as the IDS's FSM defers an archive until the lock is released.
        """
        start, stop = self.cache.start_archiving_bytes, self.cache.stop_archiving_bytes
        if start is None or stop is None:
            return []
        with self._cond:
            oldest_first = sorted(self._online, key=lambda u: self._online_since.get(u, 0.0))
            locked = set(self._shared_locks)
        sizes = {u: self._unit_bytes(u) for u in oldest_first}
        used = sum(sizes.values())
        if used <= start:
            return []
        evict: list[Unit] = []
        for u in oldest_first:
            if used <= stop:
                break
            if self._unit_locked(u, locked):
                continue
            evict.append(u)
            used -= sizes[u]
        if evict:
            self._archive_units(evict)
            self.evictions += len(evict)
            log.info("Tidier archived %d unit(s) to bring main storage to %d bytes",
                     len(evict), used)
        return evict

    def _unit_locked(self, unit: Unit, locked: set[int]) -> bool:
        kind, uid = unit
        if kind == "dataset":
            return uid in locked
        df = self.store.datafiles.get(uid)
        return df is not None and df.dataset_id in locked

    def _tidier_loop(self) -> None:
        interval = max(self.cache.check_interval_s, 0.01)
        while True:
            with self._cond:
                if self._stopping:
                    return
                self._cond.wait(interval)
                if self._stopping:
                    return
            try:
                self.tidy()
            except Exception:  # the Tidier must survive one bad check
                log.exception("Tidier size check failed")

    def fail_next_restores(self, count: int = 1, datafile_ids: Iterable[int] | None = None,
                           dataset_ids: Iterable[int] | None = None) -> dict[str, Any]:
        """Arm the next `count` restore completions (optionally only of matching units) to fail.

        Applies to restores already queued too: the outcome is decided at completion time.
        """
        plan = _FailPlan(int(count),
                         frozenset(int(i) for i in datafile_ids) if datafile_ids else None,
                         frozenset(int(i) for i in dataset_ids) if dataset_ids else None)
        with self._cond:
            self._plans.append(plan)
        return {"armed": plan.remaining,
                "datafile_ids": sorted(plan.datafile_ids or []),
                "dataset_ids": sorted(plan.dataset_ids or [])}

    # -- shared locks (getData), shown by getServiceStatus --
    def lock_shared(self, dataset_ids: Iterable[int]) -> list[int]:
        ids = list(dataset_ids)
        with self._cond:
            self._shared_locks.update(ids)
        return ids

    def unlock_shared(self, dataset_ids: Iterable[int]) -> None:
        with self._cond:
            self._shared_locks.subtract(dataset_ids)
            for k in [k for k, v in self._shared_locks.items() if v <= 0]:
                del self._shared_locks[k]

    def service_status(self) -> dict[str, Any]:
        """FiniteStateMachine.getServiceStatus's JSON (wire reference §1.5)."""
        with self._cond:
            ops = [{"data": self._describe(u), "request": "RESTORE_REQUESTED"}
                   for u in self._restoring]
            locks = [{"id": k, "type": "SHARED", "count": v}
                     for k, v in sorted(self._shared_locks.items())]
            failures = sorted(uid for _, uid in self._failed)
        return {"opsQueue": ops, "lockCount": len(locks), "locks": locks, "failures": failures}

    def _describe(self, unit: Unit) -> str:
        kind, uid = unit
        if kind == "datafile":
            df = self.store.datafiles.get(uid)
            return (df.location or str(uid)) if df else str(uid)
        ds = self.store.datasets.get(uid)
        if ds is None:
            return str(uid)
        inv = self.store.investigation_of(ds)
        fac = self.store.facility.name if self.store.facility else ""
        return f"{inv.id}/{ds.id} ({fac}/{inv.name}/{inv.visit_id}/{ds.name})"

    # -- background work --
    def _queue_for(self, unit: Unit) -> queue.Queue:
        return self._queues[hash(unit) % len(self._queues)]

    def _schedule_loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping:
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        break
                    timeout = self._heap[0][0] - now if self._heap else None
                    self._cond.wait(timeout)
                if self._stopping:
                    return
                _, ticket, unit = heapq.heappop(self._heap)
                self._deadline_passed(unit, ticket)

    def _deadline_passed(self, unit: Unit, ticket: int) -> None:
        """Called with the lock held when a restore's time is up: fail it or maybe finish it."""
        r = self._restoring.get(unit)
        if r is None or r.ticket != ticket:
            return
        r.due_passed = True
        if self._take_failure(unit):
            del self._restoring[unit]
            self._failed.add(unit)
            log.warning("simulated restore of %s failed", unit)
            self._queue_for(unit).put(("archive", unit, 0))
        elif r.files_ready:
            self._finish(unit)

    def _take_failure(self, unit: Unit) -> bool:
        for plan in self._plans:
            if plan.remaining > 0 and self._plan_matches(plan, unit):
                plan.remaining -= 1
                self._plans = [p for p in self._plans if p.remaining > 0]
                return True
        return False

    def _plan_matches(self, plan: _FailPlan, unit: Unit) -> bool:
        if plan.datafile_ids is None and plan.dataset_ids is None:
            return True
        kind, uid = unit
        if kind == "dataset":
            ds = self.store.datasets.get(uid)
            df_ids = set(ds.datafile_ids) if ds else set()
            return bool((plan.dataset_ids and uid in plan.dataset_ids)
                        or (plan.datafile_ids and df_ids & plan.datafile_ids))
        df = self.store.datafiles.get(uid)
        return bool((plan.datafile_ids and uid in plan.datafile_ids)
                    or (plan.dataset_ids and df and df.dataset_id in plan.dataset_ids))

    def _finish(self, unit: Unit) -> None:
        del self._restoring[unit]
        self._online.add(unit)
        self._online_since[unit] = time.monotonic()
        self.tidy()  # the lock is re-entrant: no moment with more online than the cache holds
        self._failed.discard(unit)

    def _worker_loop(self, q: queue.Queue) -> None:
        while True:
            job = q.get()
            if job is None:
                return
            op, unit, ticket = job
            try:
                if op == "restore":
                    self._write_unit(unit, ticket)
                else:
                    self._drop_unit(unit)
            except Exception:  # a worker must survive one bad unit
                log.exception("storage job %s on %s failed", op, unit)

    def _write_unit(self, unit: Unit, ticket: int) -> None:
        for df in self._unit_files(unit):
            if self._stopping or not self._still_restoring(unit, ticket):
                return
            materialize(self.store, df)
        with self._cond:
            r = self._restoring.get(unit)
            if r is None or r.ticket != ticket:
                return
            r.files_ready = True
            if r.due_passed:
                self._finish(unit)

    def _still_restoring(self, unit: Unit, ticket: int) -> bool:
        with self._cond:
            r = self._restoring.get(unit)
            return r is not None and r.ticket == ticket

    def _drop_unit(self, unit: Unit) -> None:
        with self._cond:
            if unit in self._online or unit in self._restoring:
                return  # restored again since the archive was asked for
        for df in self._unit_files(unit):
            dematerialize(self.store, df)
