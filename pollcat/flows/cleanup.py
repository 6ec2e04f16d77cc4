"""Retention as a scheduled flow: remove deliveries older than their target's retention period
and revoke the grants pollcat made for them (`pollcat cleanup` on the command line)."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.states import Failed

from pollcat.flows.common import open_pipeline


@flow(name="pollcat-cleanup", flow_run_name="cleanup-{facility}")
def cleanup(facility: str, dry_run: bool = False):
    """`dry_run` logs what would be removed and changes nothing."""
    logger = get_run_logger()
    lines: list[str] = []
    with open_pipeline(facility) as pipeline:
        status = pipeline.cleanup(dry_run=dry_run, out=lines.append)
    for line in lines:
        logger.info(line)
    if status:
        return Failed(message="cleanup left deliveries it could not prove were pollcat's: "
                              "see the run logs")
    return lines
