"""What the flows share: loading the pipeline from its block, and handing ready downloads to
Prefect tasks. The orchestration itself is `Pipeline.sweep`, the same loop the CLI runs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.logging.handlers import APILogHandler
from prefect.states import Failed, State

from pollcat import logsafe
from pollcat.blocks.facility import PollcatFacility
from pollcat.flows.slots import prefect_slots
from pollcat.pipeline import Outcome, Pipeline, Submit
from pollcat.tasks.steps import deliver, record_failure
from pollcat.topcat import Download


@contextmanager
def open_pipeline(facility_block: str) -> Iterator[Pipeline]:
    """The facility block (and the target blocks it routes to) are the whole configuration.
    Transfers take their slots from Prefect's global concurrency limits (flows/slots.py)."""
    send_pollcat_logs_to_prefect()
    with prefect_slots(), PollcatFacility.load(facility_block).get_pipeline() as pipeline:
        yield pipeline


def send_pollcat_logs_to_prefect() -> None:
    """pollcat's own log lines (warnings about retries, expiries) belong in the run logs an
    operator reads, not only on the worker's stderr. Idempotent."""
    pollcat_logger = logging.getLogger("pollcat")
    if not any(isinstance(h, APILogHandler) for h in pollcat_logger.handlers):
        pollcat_logger.addHandler(APILogHandler())
    logsafe.install()  # on every handler, this one included
    # at least INFO, but never less than the operator asked for: with
    # PREFECT_LOGGING_ROOT_LEVEL=DEBUG (README "Operate") pollcat's DEBUG lines reach the run logs
    if pollcat_logger.getEffectiveLevel() > logging.INFO:
        pollcat_logger.setLevel(logging.INFO)


def task_submitter(pipeline: Pipeline) -> Submit:
    """Each ready download becomes a `deliver` task run named after facility and download."""
    def submit(d: Download, prepared_id: str):
        return deliver.submit(pipeline, d, prepared_id)
    return submit


def settle_run(outcomes: list[Outcome], facility: str) -> State | None:
    """One Failed task run per download that failed permanently, named after it and carrying
    the reason; and a Failed state for the flow run when anything failed."""
    failed = [o for o in outcomes if o.outcome.failed]
    for o in failed:
        record_failure(facility, o.download_id, o.reason, return_state=True)
    if failed:
        ids = ", ".join(str(o.download_id) for o in failed)
        # no `data`: a Failed state's result must be an exception or nothing, else the
        # flow engine of a deployment run dies with "Unexpected result for failed state"
        return Failed(message=f"{len(failed)} download(s) of {facility} failed permanently: "
                              f"{ids}")
    return None
