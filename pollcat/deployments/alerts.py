"""pollcat's alerts: Prefect automations declared here and applied by `bootstrap` by name.

They run in the Prefect server, not in a worker, so they still fire when every worker is dead:

* a pollcat flow run (sweep, deliver, check, cleanup) that ends Failed or Crashed;
* a download that failed permanently (pollcat's `pollcat.download.expired` event): one message
  per download, with the user, the transport and the reason;
* a target that cannot take data (`pollcat.target.held`), a restore that waits longer than the
  facility block's `alert_waiting_hours` (`pollcat.download.stuck`);
* no completed sweep of a facility block within N minutes (proactive: silence is the signal);
* the work pool without a ready worker;
* a flow run whose heartbeats stopped (its worker or host died, or the worker was restarted
  mid-run) is marked Crashed. That frees its deployment concurrency slot, which would
  otherwise keep cancelling every later sweep, and the Crashed run raises the first alert.

Prefect's own `Automation.create()` is not idempotent (the same name twice gives two
automations and duplicate messages), so `ensure_automation` looks each one up by name.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState, SendNotification
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification

from pollcat.deployments.resources import POOL, Change

# Flow runs send a heartbeat this often (prefect.yaml sets PREFECT_FLOWS_HEARTBEAT_FREQUENCY
# for every pollcat deployment); three missed beats mean the run's process is gone.
HEARTBEAT_S = 30
MISSED_HEARTBEATS = 3
DEFAULT_SWEEP_SILENCE_MIN = 30.0

RUN_FAILED = "pollcat: a run failed or crashed"
DOWNLOAD_FAILED = "pollcat: a download failed permanently"
TARGET_HELD = "pollcat: a target cannot take data"
DOWNLOAD_STUCK = "pollcat: a restore takes too long"
POOL_NOT_READY = f"pollcat: work pool {POOL} has no ready worker"
ZOMBIE_RUNS = "pollcat: crash runs whose worker is gone"
NO_SWEEP_PREFIX = "pollcat: no completed sweep of "

_POLLCAT_FLOWS = ResourceSpecification({"prefect.resource.role": "flow",
                                        "prefect.resource.name": "pollcat-*"})
_FLOW_RUNS = ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"})


def no_sweep_name(facility_block: str) -> str:
    return f"{NO_SWEEP_PREFIX}{facility_block}"


def _notify(block_ids: Iterable[UUID], subject: str, body: str) -> list[SendNotification]:
    return [SendNotification(block_document_id=i, subject=subject, body=body)
            for i in block_ids]


def zombie_runs(heartbeat_s: int = HEARTBEAT_S) -> AutomationCore:
    """Prefect's documented zombie-run automation, limited to pollcat's flows."""
    return AutomationCore(
        name=ZOMBIE_RUNS,
        description="A pollcat flow run that stopped sending heartbeats is marked Crashed.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed",
                    "prefect.flow-run.Failed", "prefect.flow-run.Cancelled",
                    "prefect.flow-run.Crashed"},
            match=_FLOW_RUNS, match_related=_POLLCAT_FLOWS, for_each={"prefect.resource.id"},
            posture=Posture.Proactive, threshold=1,
            within=timedelta(seconds=heartbeat_s * MISSED_HEARTBEATS)),
        actions=[ChangeFlowRunState(
            state=StateType.CRASHED,
            message=f"no heartbeat for {heartbeat_s * MISSED_HEARTBEATS} s: the worker or "
                    "host running this flow run stopped")])


def run_failed(notify: list[UUID]) -> AutomationCore:
    return AutomationCore(
        name=RUN_FAILED,
        description="A pollcat flow run ended Failed or Crashed.",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
            match=_FLOW_RUNS, match_related=_POLLCAT_FLOWS,
            posture=Posture.Reactive, threshold=1, within=timedelta(0)),
        actions=_notify(
            notify, "{{ flow_run.name }} {{ flow_run.state.name }}",
            "pollcat flow run {{ flow_run.name }} ({{ flow.name }}) ended "
            "{{ flow_run.state.name }}:\n{{ flow_run.state.message }}\n\n"
            "flow run id: {{ flow_run.id }}"))


def _on_pollcat_event(name: str, once_per: timedelta) -> EventTrigger:
    """Fires on pollcat's own event `name`, at most once per resource within `once_per`."""
    kind = name.rsplit(".", 1)[0]  # pollcat.download.expired → resources pollcat.download.*
    return EventTrigger(
        expect={name}, match=ResourceSpecification({"prefect.resource.id": f"{kind}.*"}),
        for_each={"prefect.resource.id"}, posture=Posture.Reactive, threshold=1,
        within=once_per)


def download_failed(notify: list[UUID]) -> AutomationCore:
    """One message per download pollcat gave up on (its `pollcat.download.expired` event),
    with the user, the transport and the reason; a repeat within the hour is dropped."""
    return AutomationCore(
        name=DOWNLOAD_FAILED,
        description="One message per download that failed permanently, with the reason.",
        trigger=_on_pollcat_event("pollcat.download.expired", timedelta(hours=1)),
        actions=_notify(
            notify, "{{ event.resource.name }} failed permanently",
            "pollcat gave up on {{ event.resource.name }} and set it EXPIRED in TopCAT.\n"
            "User: {{ event.payload.user }}\n"
            "Transport: {{ event.resource.get('pollcat.transport') }}\n"
            "Reason: {{ event.payload.reason }}\n\n"
            "Fix the cause, then resume the download in TopCAT's admin page."))


def target_held(notify: list[UUID]) -> AutomationCore:
    """A target that cannot take data (unreachable, full, refusing): at most hourly each."""
    return AutomationCore(
        name=TARGET_HELD,
        description="A delivery target cannot take data; its downloads wait.",
        trigger=_on_pollcat_event("pollcat.target.held", timedelta(hours=1)),
        actions=_notify(
            notify, "{{ event.resource.name }} cannot take data",
            "pollcat holds the downloads for {{ event.resource.name }}: "
            "{{ event.payload.reason }}\nThey are delivered once the target takes data again."))


def download_stuck(notify: list[UUID]) -> AutomationCore:
    """A restore waiting longer than the facility block's `alert_waiting_hours`: daily each."""
    return AutomationCore(
        name=DOWNLOAD_STUCK,
        description="A download has waited for its restore longer than alert_waiting_hours.",
        trigger=_on_pollcat_event("pollcat.download.stuck", timedelta(hours=24)),
        actions=_notify(
            notify, "{{ event.resource.name }} still waiting for its restore",
            "{{ event.resource.name }} has been waiting since {{ event.payload.waiting_since }}"
            ": {{ event.payload.reason }}"))


def pool_not_ready(notify: list[UUID]) -> AutomationCore:
    return AutomationCore(
        name=POOL_NOT_READY,
        description="No worker of the pollcat work pool is polling.",
        trigger=EventTrigger(
            expect={"prefect.work-pool.not-ready"},
            match=ResourceSpecification({"prefect.resource.id": "prefect.work-pool.*",
                                         "prefect.resource.name": POOL}),
            posture=Posture.Reactive, threshold=1, within=timedelta(0)),
        actions=_notify(notify, f"work pool {POOL} has no ready worker",
                        f"No worker polls the {POOL} work pool: nothing is swept or "
                        "delivered. Start one: prefect worker start --pool pollcat"))


def no_sweep(facility_block: str, minutes: float, notify: list[UUID]) -> AutomationCore:
    """Proactive: fires when the facility's sweep deployment completed nothing for `minutes`
    (dead workers, a paused schedule, a sweep that fails every time)."""
    return AutomationCore(
        name=no_sweep_name(facility_block),
        description=f"No run of deployment sweep-{facility_block} completed in {minutes:g} "
                    "minutes.",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Completed"},
            match=_FLOW_RUNS,
            match_related=ResourceSpecification({
                "prefect.resource.role": "deployment",
                "prefect.resource.name": f"sweep-{facility_block}"}),
            posture=Posture.Proactive, threshold=1, within=timedelta(minutes=minutes)),
        actions=_notify(
            notify, f"no completed sweep of {facility_block} in {minutes:g} min",
            f"No run of deployment sweep-{facility_block} completed in the last {minutes:g} "
            "minutes. Check that a worker runs (prefect worker start --pool pollcat), that the "
            "schedule is active, and the last sweep runs' logs."))


def _comparable(automation: AutomationCore) -> dict[str, Any]:
    """The fields an operator declares, without server-made ids."""
    data = AutomationCore.model_validate(automation.model_dump()).model_dump(mode="json")
    data["trigger"].pop("id", None)
    for key in ("after", "expect", "for_each"):  # sets: JSON order varies between processes
        data["trigger"][key] = sorted(data["trigger"].get(key) or [])
    return data


async def ensure_automation(client: PrefectClient, desired: AutomationCore) -> Change:
    """Create `desired` once; update it in place when its declaration changed; remove
    duplicates of the same name (left by `prefect automation create` run twice)."""
    existing = await client.read_automations_by_name(desired.name)
    if not existing:
        await client.create_automation(desired)
        return Change.CREATED
    keep, *duplicates = existing
    for dup in duplicates:
        await client.delete_automation(dup.id)
    if not duplicates and _comparable(keep) == _comparable(desired):
        return Change.UNCHANGED
    await client.update_automation(keep.id, desired)
    return Change.UPDATED


async def notification_block_ids(client: PrefectClient, refs: list[str]) -> list[UUID]:
    """`<block-type-slug>/<name>` references (e.g. `custom-webhook/ops`) → document ids."""
    ids = []
    for ref in refs:
        slug, _, name = ref.partition("/")
        if not name:
            raise ValueError(f"--notify {ref!r}: expected <block-type-slug>/<block-name>")
        doc = await client.read_block_document_by_name(name, block_type_slug=slug,
                                                       include_secrets=False)
        if "notify" not in (doc.block_schema.capabilities if doc.block_schema else []):
            raise ValueError(f"block {ref} cannot send notifications")
        ids.append(doc.id)
    return ids


def declared(facility_blocks: list[str], notify: list[UUID],
             sweep_silence_min: float = DEFAULT_SWEEP_SILENCE_MIN) -> list[AutomationCore]:
    """Every automation bootstrap applies; without notification blocks only the one that
    needs none (crashing zombie runs)."""
    if not notify:
        return [zombie_runs()]
    return [zombie_runs(), run_failed(notify), download_failed(notify), target_held(notify),
            download_stuck(notify), pool_not_ready(notify),
            *(no_sweep(b, sweep_silence_min, notify) for b in facility_blocks)]
