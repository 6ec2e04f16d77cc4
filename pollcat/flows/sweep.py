"""The scheduled sweep: discover the facility's pending downloads and deliver the ready ones."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from pollcat.flows.common import open_pipeline, settle_run, task_submitter
from pollcat.tasks.report import emit_condition_events, publish_report, publish_status
from pollcat.tasks.steps import discover


@flow(name="pollcat-sweep", flow_run_name="sweep-{facility}",
      task_runner=ThreadPoolTaskRunner(max_workers=16))
def sweep(facility: str):
    """One sweep of `facility` (a pollcat-facility block name). Not-ready downloads are left
    for the next sweep; the run fails when a download failed permanently (each one also has a
    Failed task run named after it) or when pollcat's own configuration is wrong."""
    with open_pipeline(facility) as pipeline:
        downloads = discover(pipeline)
        outcomes = pipeline.sweep(downloads, submit=task_submitter(pipeline))
        rows = publish_report(pipeline.facility_name, outcomes)
        publish_status(pipeline, outcomes)
        emit_condition_events(pipeline, outcomes)
        get_run_logger().info("sweep done: %s",
                              sorted({str(o.outcome) for o in outcomes}) or "idle")
        return settle_run(outcomes, pipeline.facility_name) or rows


if __name__ == "__main__":
    import sys

    sweep(sys.argv[1])
