"""The scheduled sweep: discover the facility's pending downloads and deliver the ready ones."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import load_pipeline, run_downloads
from tasks.report import publish_report
from tasks.steps import discover


@flow(name="pollcat-sweep", flow_run_name="sweep-{facility}",
      task_runner=ThreadPoolTaskRunner(max_workers=16))
def sweep(facility: str = "default", poll_budget_s: float | None = None) -> list[dict]:
    """One sweep of `facility` (a pollcat-facility block name). Not-ready downloads are left
    for the next sweep; a failing download never fails the sweep."""
    pipeline = load_pipeline(facility)
    try:
        downloads = discover(pipeline)
        outcomes = run_downloads(pipeline, downloads, poll_budget_s) if downloads else []
        rows = publish_report(pipeline.cfg.facility.name, outcomes)
        get_run_logger().info("sweep done: %s", {o.outcome for o in outcomes} or "idle")
        return rows
    finally:
        pipeline.clients.close()


if __name__ == "__main__":
    sweep()
