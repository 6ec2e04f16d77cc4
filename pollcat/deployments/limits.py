"""Global concurrency limits declared by the blocks: one per IDS, one per facility target.

`ids_stream_limit` on a facility block bounds the getData streams open against each of its IDSs
(`pollcat-ids-<host:port>`); `writer_limit` on a target block bounds the files written to it
(`pollcat-target-<facility>-<transport>`). They are Prefect global concurrency limits so that
they hold for all workers on all hosts together; pollcat takes slots in them with leases
(pollcat.flows.slots). Several facility blocks that share an IDS share its limit: the smallest
declared value wins, an IDS is sized once.
"""

from __future__ import annotations

from collections.abc import Iterable

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.exceptions import ObjectNotFound

from pollcat.config import PipelineConfig
from pollcat.deployments.resources import Change
from pollcat.sources import ids_limit_name, target_limit_name


def declared_limits(configs: Iterable[PipelineConfig]) -> dict[str, int]:
    """Limit name → slots, from every facility's configuration (with its targets)."""
    limits: dict[str, int] = {}

    def declare(name: str, value: int | None) -> None:
        if value is not None:
            limits[name] = min(value, limits.get(name, value))

    for cfg in configs:
        fac = cfg.facility
        for url in {fac.ids_url, *fac.ids_urls.values()}:
            declare(ids_limit_name(url), cfg.ids_stream_limit)
        for transport, target in cfg.routes.items():
            declare(target_limit_name(fac.facility_name, transport), target.writer_limit)
    return limits


async def ensure_limit(client: PrefectClient, name: str, limit: int) -> Change:
    """Create the limit, or set its number of slots; slots held right now stay held."""
    try:
        current = await client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=limit, active=True))
        return Change.CREATED
    if current.limit == limit and current.active:
        return Change.UNCHANGED
    await client.update_global_concurrency_limit(
        name, GlobalConcurrencyLimitUpdate(limit=limit, active=True))
    return Change.UPDATED
