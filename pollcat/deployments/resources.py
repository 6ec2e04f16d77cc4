"""Server-side objects pollcat needs, each created once and looked up by name on every run.

Every `ensure_*` returns what it did, so `bootstrap` can print one line per object and a second
run can be checked to change nothing.
"""

from __future__ import annotations

from enum import StrEnum

from prefect.blocks.core import Block
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.exceptions import ObjectNotFound
from prefect.workers.process import ProcessWorker

POOL = "pollcat"


class Change(StrEnum):
    """What an `ensure_*` call did to the server."""

    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


async def ensure_block_type(client: PrefectClient, block: type[Block]) -> Change:
    """Register (or refresh) a block type and its schema; Prefect upserts by slug, so this is
    safe to repeat, and it must be repeated after a schema change."""
    try:
        await client.read_block_type_by_slug(block.get_block_type_slug())
    except ObjectNotFound:
        await block.aregister_type_and_schema(client=client)
        return Change.CREATED
    try:
        await client.read_block_schema_by_checksum(block._calculate_schema_checksum())
        schema_known = True
    except ObjectNotFound:
        schema_known = False
    await block.aregister_type_and_schema(client=client)  # refreshes description, example
    return Change.UNCHANGED if schema_known else Change.UPDATED


async def ensure_process_pool(client: PrefectClient, name: str = POOL,
                              concurrency_limit: int | None = None) -> Change:
    """A process work pool with Prefect's default job template. An existing pool is left as
    it is, except for its concurrency limit when one is asked for."""
    try:
        pool = await client.read_work_pool(name)
    except ObjectNotFound:
        await client.create_work_pool(WorkPoolCreate(
            name=name, type="process", concurrency_limit=concurrency_limit,
            base_job_template=ProcessWorker.get_default_base_job_template(),
            description="pollcat flow runs, one subprocess each, on hosts that see the targets"))
        return Change.CREATED
    if concurrency_limit is not None and pool.concurrency_limit != concurrency_limit:
        await client.update_work_pool(name, WorkPoolUpdate(concurrency_limit=concurrency_limit))
        return Change.UPDATED
    return Change.UNCHANGED
