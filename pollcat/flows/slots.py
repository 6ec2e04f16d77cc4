"""Prefect's global concurrency limits as pollcat's transfer slots.

`pollcat.sources` takes a slot around each getData stream (`pollcat-ids-<host:port>`) and each
file written (`pollcat-target-<facility>-<transport>`) through whatever factory is installed in
its `SLOTS` contextvar; outside a flow that is `nullcontext`. Inside a flow, `prefect_slots()`
installs `PrefectSlots`, so the limits bootstrap created hold for every worker on every host.

Each slot is a *lease* (Prefect's `concurrency(..., lease_duration=...)`), renewed by a thread
while held: when a worker dies (kill -9, power loss) its slots come back once the lease expires
instead of being lost until someone resets the limit by hand.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound

from pollcat.sources import SLOTS

log = logging.getLogger("pollcat.flows.slots")

#: The shortest lease Prefect's server accepts; a dead worker's slots come back this much
#: (plus the server's repossessor interval) after it died.
SLOT_LEASE_S = 60.0


class PrefectSlots:
    """`slot(name)` for Prefect global concurrency limits.

    A limit that does not exist (nobody configured one) costs nothing: whether it exists is
    asked once per name and process, and then `nullcontext` is handed out, instead of an
    acquire round trip per file that Prefect would wave through anyway (strict=False)."""

    def __init__(self, lease_s: float = SLOT_LEASE_S):
        self.lease_s = lease_s
        self._exists: dict[str, bool] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str) -> AbstractContextManager[Any]:
        if not self._limited(name):
            return nullcontext()
        return concurrency(name, occupy=1, strict=False, lease_duration=self.lease_s)

    def _limited(self, name: str) -> bool:
        with self._lock:
            if name in self._exists:
                return self._exists[name]
        try:
            with get_client(sync_client=True) as client:
                limit = client.read_global_concurrency_limit_by_name(name)
            exists = bool(limit.active)
        except ObjectNotFound:
            exists = False
        except Exception as exc:  # noqa: BLE001 - the server's answer decides, not this probe
            log.warning("could not look up concurrency limit %s (%s); taking slots anyway",
                        name, exc)
            return True
        with self._lock:
            self._exists[name] = exists
        return exists


@contextmanager
def prefect_slots(lease_s: float = SLOT_LEASE_S) -> Iterator[PrefectSlots]:
    """Transfers started in this context (and the threads and tasks it starts) take their
    slots from Prefect's global concurrency limits."""
    slots = PrefectSlots(lease_s)
    token = SLOTS.set(slots)
    try:
        yield slots
    finally:
        SLOTS.reset(token)
