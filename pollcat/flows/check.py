"""`pollcat check` as a flow: run it from the UI after changing a block."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import Failed

from pollcat import logsafe
from pollcat.blocks import PollcatFacility
from pollcat.check import all_ok, run_checks


@flow(name="pollcat-check", flow_run_name="check-{facility}")
def check(facility: str):
    """Reach every service with the functional account and check every routed target; fails
    when pollcat could not deliver, with one line per check in the logs and an artifact."""
    block = PollcatFacility.load(facility)
    clients = block.get_clients()
    try:
        results = run_checks(block.pipeline_config(), clients)
    finally:
        clients.close()
    logger = get_run_logger()
    for r in results:
        (logger.info if all_ok([r]) else logger.error)(r.line())
    create_markdown_artifact(
        key="pollcat-check-" + "".join(c if c.isalnum() else "-" for c in facility.lower()),
        markdown="| check | verdict | detail |\n|---|---|---|\n" + "\n".join(
            f"| {r.what} | {r.verdict} | {logsafe.redact(r.detail)} |" for r in results),
        description=f"pollcat check of {facility}")
    if not all_ok(results):
        failed = [r.what for r in results if not all_ok([r])]
        return Failed(message=f"check failed: {', '.join(failed)}")
    return [r.line() for r in results]
