"""The sweep as a dispatcher: one `deliver` flow run per ready download, on any worker.

Under a deployment the sweep only discovers and checks; each ready download becomes a flow run
of the facility's deliver deployment (`run_deployment(..., timeout=0)`), which any worker of the
pool, on any host, picks up. The sweep does not wait for it: the download's outcome is that
flow run's, and its row in the sweep report says `dispatched`.

Exactly one run per piece of work: the idempotency key is facility block, download id, a
fingerprint of the preparedId (never the preparedId: run metadata is readable by every Prefect
user) and the attempt. Two sweeps at once (a slow one overlapping the next, a second sweep
host) compute the same key and Prefect returns the run that exists. The attempt moves on only
once the previous run of that preparedId has ended (completed without delivering, crashed with
its host, failed): then the download is still pending, and a new run is due.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterName,
)
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from pollcat.pipeline import Outcome
from pollcat.state import fingerprint
from pollcat.states import OutcomeKind
from pollcat.topcat import Download

log = logging.getLogger("pollcat.flows.dispatch")

DELIVER_FLOW = "pollcat-deliver"


def deliver_deployment_name(facility_block: str) -> str:
    """`flow/deployment` of a facility block's deliver deployment (prefect.yaml)."""
    return f"{DELIVER_FLOW}/deliver-{facility_block}"


def deliver_run_name(facility_block: str, download_id: int) -> str:
    """The same name the deliver flow gives itself (flows/deliver.py)."""
    return f"deliver-{facility_block}-{download_id}"


def key_prefix(facility_block: str, download_id: int, prepared_id: str) -> str:
    return f"pollcat-deliver:{facility_block}:{download_id}:{fingerprint(prepared_id)}"


def idempotency_key(facility_block: str, download_id: int, prepared_id: str,
                    attempt: int) -> str:
    """The key of one attempt; no secret in it (the preparedId only as a fingerprint)."""
    return f"{key_prefix(facility_block, download_id, prepared_id)}:{attempt}"


def find_deliver_deployment(facility_block: str) -> UUID | None:
    """The deliver deployment's id, or None when the facility has none (then the sweep
    delivers in-process, as it always did)."""
    try:
        with get_client(sync_client=True) as client:
            return client.read_deployment_by_name(deliver_deployment_name(facility_block)).id
    except ObjectNotFound:
        return None


class Dispatcher:
    """A `Submit` that creates (or finds) the deliver flow run of a ready download and returns
    an already-resolved future: the sweep never waits for the delivery."""

    def __init__(self, facility_block: str, deployment_id: UUID):
        self.facility_block = facility_block
        self.deployment_id = deployment_id

    def __call__(self, d: Download, prepared_id: str) -> Future[Outcome]:
        run = self.dispatch(d, prepared_id)
        state = run.state.name if run.state else "Scheduled"
        future: Future[Outcome] = Future()
        future.set_result(Outcome(download_id=d.id, user=d.user_name, transport=d.transport,
                                  outcome=OutcomeKind.DISPATCHED,
                                  reason=f"flow run {run.name} ({state})"))
        return future

    def dispatch(self, d: Download, prepared_id: str) -> FlowRun:
        """The run in flight for this preparedId, or a new one (the next attempt)."""
        prefix = key_prefix(self.facility_block, d.id, prepared_id)
        latest, attempt = self._latest_attempt(d.id, prefix)
        if latest is not None and not (latest.state and latest.state.is_final()):
            return latest  # in flight: scheduled, pending or running somewhere
        run = run_deployment(
            self.deployment_id, parameters={"download_id": d.id, "facility": self.facility_block},
            flow_run_name=deliver_run_name(self.facility_block, d.id), timeout=0,
            idempotency_key=f"{prefix}:{attempt + 1}", as_subflow=False)
        log.info("download %s: deliver run %s (attempt %d)", d.id, run.name, attempt + 1)
        return run

    def _latest_attempt(self, download_id: int, prefix: str) -> tuple[FlowRun | None, int]:
        """The deliver run with the highest attempt for this key prefix, and that attempt."""
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(
                    any_=[deliver_run_name(self.facility_block, download_id)])),
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(
                    any_=[self.deployment_id])))
        best: tuple[FlowRun | None, int] = (None, 0)
        for run in runs:
            key = run.idempotency_key or ""
            head, _, tail = key.rpartition(":")
            if head == prefix and tail.isdigit() and int(tail) > best[1]:
                best = (run, int(tail))
        return best
