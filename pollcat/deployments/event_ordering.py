"""A Prefect server plugin: alerts on scheduled runs fire at once, not 15 minutes late.

Set on the server (deploy/systemd/prefect-server.env.example):

    PREFECT_SERVER_EVENTS_CAUSAL_ORDERING=pollcat.deployments.event_ordering

Why: Prefect's scheduler (3.8.8, still 3.9.1) writes a run's Scheduled state with a bulk INSERT
and emits no `prefect.flow-run.Scheduled` event, but the run's Pending event still declares that it
`follows` that state when the two are less than 5 minutes apart (every run of a short interval,
and the first runs after each deploy). The automations service then parks Pending, and with it
Running, Completed, Failed and Crashed, until its 15-minute lookback gives up on the leader:
"a run failed" alerts come 15 minutes late, "no completed sweep" fires while sweeps complete,
and the zombie-run automation tries to crash runs that already finished (measured in
tests/prefect_server/test_alerts.py). This ordering treats a Pending event whose leader was
never seen as having none; every other event keeps Prefect's in-memory ordering.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

from prefect.server.events.ordering import memory
from prefect.server.events.schemas.events import ReceivedEvent

PENDING = "prefect.flow-run.Pending"


class CausalOrdering(memory.CausalOrdering):
    """Prefect's in-memory causal ordering, minus the wait for unemitted Scheduled states."""

    _instances: ClassVar[dict[str, CausalOrdering]] = {}  # not shared with the parent class
    _locks: ClassVar[dict[str, asyncio.Lock]] = {}

    async def wait_for_leader(self, event: ReceivedEvent) -> None:
        if (event.event == PENDING and event.follows and event.follows != event.id
                and not await self.event_has_been_seen(event.follows)
                and not await self.event_has_started_processing(event.follows)):
            return  # the leader is a Scheduled state written without an event
        await super().wait_for_leader(event)
