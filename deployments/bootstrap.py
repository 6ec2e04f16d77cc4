"""Idempotent set-up of a Prefect server for pollcat.

    python -m deployments.bootstrap                      # block types, work pool
    python -m deployments.bootstrap --deploy             # ... and deploy every facility block
    python -m deployments.bootstrap --deploy --sweep-interval 300

Run it after every upgrade: everything is looked up by name first, so a second run changes
nothing (and prints `unchanged`). Save the facility and target blocks (README, "Configure")
before `--deploy`: it deploys `prefect.yaml` once per saved facility block, as
`sweep-<block>` and `deliver-<block>`.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable

from prefect.client.orchestration import get_client

from blocks import DeliveryTarget, PollcatFacility
from deployments.facilities import deploy_facility, facility_block_names
from deployments.resources import POOL, Change, ensure_block_type, ensure_process_pool

Report = Callable[[str], None]


async def bootstrap(*, sweep_interval_s: float | None = None, pool_limit: int | None = None,
                    deploy: bool = False, report: Report = print) -> dict[str, Change]:
    """Bring the server to pollcat's declared state; returns what changed, by object."""
    changes: dict[str, Change] = {}

    def note(what: str, change: Change) -> None:
        changes[what] = change
        report(f"{what}: {change}")

    async with get_client() as client:
        for block in (PollcatFacility, DeliveryTarget):
            note(f"block type {block.get_block_type_slug()}",
                 await ensure_block_type(client, block))
        note(f"work pool {POOL}", await ensure_process_pool(client, POOL, pool_limit))
        facilities = await facility_block_names(client) if deploy else []
    if deploy and not facilities:
        report("no pollcat-facility block saved yet: nothing to deploy")
    for name in facilities:
        await asyncio.to_thread(deploy_facility, name, sweep_interval_s=sweep_interval_s)
        report(f"deployments sweep-{name}, deliver-{name}: deployed")
    return changes


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deployments.bootstrap", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--deploy", action="store_true",
                   help="deploy prefect.yaml once per saved pollcat-facility block")
    p.add_argument("--sweep-interval", type=float, metavar="SECONDS",
                   help="with --deploy: sweep this often instead of prefect.yaml's interval")
    p.add_argument("--pool-limit", type=int, metavar="N",
                   help="at most N flow runs at once in the work pool, across all workers")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.sweep_interval is not None and (args.sweep_interval < 1 or not args.deploy):
        _parser().error("--sweep-interval needs --deploy and at least 1 second")
    asyncio.run(bootstrap(sweep_interval_s=args.sweep_interval, pool_limit=args.pool_limit,
                          deploy=args.deploy))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
