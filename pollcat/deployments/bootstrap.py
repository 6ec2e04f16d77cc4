"""Idempotent set-up of a Prefect server for pollcat.

    python -m pollcat.deployments.bootstrap             # block types, work pool, automations
    (from a checkout, python -m deployments.bootstrap is the same thing)
    python -m pollcat.deployments.bootstrap --deploy    # ... and deploy every facility block
    python -m pollcat.deployments.bootstrap --deploy --sweep-interval 300
    python -m pollcat.deployments.bootstrap --notify custom-webhook/ops \
        --notify pollcat-operator-email/ops

Run it after every upgrade: everything is looked up by name first, so a second run changes
nothing (and prints `unchanged`). Save the facility and target blocks (README, "Configure")
before `--deploy`: it deploys `prefect.yaml` once per saved facility block, as
`sweep-<block>` and `deliver-<block>`. `--notify` names the notification blocks the alerts of
`pollcat.deployments.alerts` go to (any Prefect notification block, or pollcat's
`pollcat-operator-email`); without it, alert automations already on the server are kept.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable

from prefect.client.orchestration import get_client

from pollcat import logsafe
from pollcat.blocks import DeliveryTarget, OperatorEmail, PollcatFacility
from pollcat.config import PipelineConfig
from pollcat.deployments import alerts
from pollcat.deployments.facilities import deploy_facility, facility_block_names
from pollcat.deployments.limits import declared_limits, ensure_limit
from pollcat.deployments.resources import POOL, Change, ensure_block_type, ensure_process_pool

Report = Callable[[str], None]


async def bootstrap(*, sweep_interval_s: float | None = None, pool_limit: int | None = None,
                    deploy: bool = False, notify: list[str] | None = None,
                    sweep_silence_min: float = alerts.DEFAULT_SWEEP_SILENCE_MIN,
                    report: Report = print) -> dict[str, Change]:
    """Bring the server to pollcat's declared state; returns what changed, by object."""
    changes: dict[str, Change] = {}

    def note(what: str, change: Change) -> None:
        changes[what] = change
        report(f"{what}: {change}")

    async with get_client() as client:
        for block in (PollcatFacility, DeliveryTarget, OperatorEmail):
            note(f"block type {block.get_block_type_slug()}",
                 await ensure_block_type(client, block))
        note(f"work pool {POOL}", await ensure_process_pool(client, POOL, pool_limit))
        facilities = await facility_block_names(client)
        notify_ids = await alerts.notification_block_ids(client, notify or [])
        for automation in alerts.declared(facilities, notify_ids, sweep_silence_min):
            note(f"automation {automation.name!r}",
                 await alerts.ensure_automation(client, automation))
        if not notify_ids:
            report("alerts: no --notify block given; alert automations on the server are kept")
        configs = await asyncio.to_thread(_pipeline_configs, facilities, report)
        for name, limit in sorted(declared_limits(configs).items()):
            note(f"concurrency limit {name} ({limit})", await ensure_limit(client, name, limit))
    if deploy and not facilities:
        report("no pollcat-facility block saved yet: nothing to deploy")
    for name in facilities if deploy else []:
        await asyncio.to_thread(deploy_facility, name, sweep_interval_s=sweep_interval_s)
        report(f"deployments sweep-{name}, deliver-{name}: deployed")
    return changes


def _pipeline_configs(facilities: list[str], report: Report) -> list[PipelineConfig]:
    """Every facility block's configuration with its targets (blocks load synchronously). A
    block that cannot be loaded is reported and left out: its limits wait for the next run,
    the rest of the bootstrap does not."""
    configs = []
    for name in facilities:
        try:
            configs.append(PollcatFacility.load(name).pipeline_config())
        except Exception as exc:  # noqa: BLE001 - one broken block must not stop the others
            report(f"concurrency limits of facility block {name}: not loaded "
                   f"({logsafe.redact(str(exc))})")
    return configs


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pollcat.deployments.bootstrap", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--deploy", action="store_true",
                   help="deploy prefect.yaml once per saved pollcat-facility block")
    p.add_argument("--sweep-interval", type=float, metavar="SECONDS",
                   help="with --deploy: sweep this often instead of prefect.yaml's interval")
    p.add_argument("--notify", action="append", metavar="SLUG/NAME",
                   help="a notification block the alerts go to, e.g. custom-webhook/ops or "
                        "pollcat-operator-email/ops (repeatable)")
    p.add_argument("--sweep-silence-minutes", type=float, metavar="N",
                   default=alerts.DEFAULT_SWEEP_SILENCE_MIN,
                   help="alert when no sweep of a facility completed for N minutes "
                        "(default %(default)s)")
    p.add_argument("--pool-limit", type=int, metavar="N",
                   help="at most N flow runs at once in the work pool, across all workers")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.sweep_interval is not None and (args.sweep_interval < 1 or not args.deploy):
        _parser().error("--sweep-interval needs --deploy and at least 1 second")
    asyncio.run(bootstrap(sweep_interval_s=args.sweep_interval, pool_limit=args.pool_limit,
                          deploy=args.deploy, notify=args.notify,
                          sweep_silence_min=args.sweep_silence_minutes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
