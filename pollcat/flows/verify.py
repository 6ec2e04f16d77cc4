"""The verifying pass as a flow: schedule it (e.g. nightly) to catch deliveries whose files went
missing or changed after COMPLETE."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.states import Failed

from pollcat.flows.common import open_pipeline


@flow(name="pollcat-verify", flow_run_name="verify-{facility}")
def verify(facility: str):
    lines: list[str] = []
    with open_pipeline(facility) as pipeline:
        status = pipeline.verify(out=lines.append)
    logger = get_run_logger()
    for line in lines:
        (logger.error if "PROBLEM" in line else logger.info)(line)
    if status:
        return Failed(message=lines[-1] if lines else "verification found problems")
    return lines
