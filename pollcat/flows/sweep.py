"""The scheduled sweep: discover the facility's pending downloads and deliver the ready ones."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import deployment
from prefect.task_runners import ThreadPoolTaskRunner

from pollcat.flows.common import open_pipeline, settle_run, task_submitter
from pollcat.flows.dispatch import Dispatcher, find_deliver_deployment
from pollcat.pipeline import Pipeline, Submit
from pollcat.tasks.report import emit_condition_events, publish_report, publish_status
from pollcat.tasks.steps import discover


@flow(name="pollcat-sweep", flow_run_name="sweep-{facility}",
      task_runner=ThreadPoolTaskRunner(max_workers=16))
def sweep(facility: str):
    """One sweep of `facility` (a pollcat-facility block name). Not-ready downloads are left
    for the next sweep; the run fails when a download failed permanently (each one also has a
    Failed task run named after it) or when pollcat's own configuration is wrong.

    Run from a deployment whose facility has a deliver deployment, the sweep dispatches: each
    ready download becomes a deliver flow run that any worker picks up (flows/dispatch.py).
    Otherwise (`python flows/sweep.py`, tests) the downloads are delivered here, as tasks."""
    with open_pipeline(facility) as pipeline:
        downloads = discover(pipeline)
        outcomes = pipeline.sweep(downloads, submit=choose_submit(pipeline, facility))
        rows = publish_report(pipeline.facility_name, outcomes)
        publish_status(pipeline, outcomes)
        emit_condition_events(pipeline, outcomes)
        get_run_logger().info("sweep done: %s",
                              sorted({str(o.outcome) for o in outcomes}) or "idle")
        return settle_run(outcomes, pipeline.facility_name) or rows


def choose_submit(pipeline: Pipeline, facility: str) -> Submit:
    """Dispatch to the deliver deployment when the facility asks for it (`dispatch_deliveries`),
    this run came from a deployment and the facility has a deliver deployment; deliver
    in-process otherwise."""
    if pipeline.cfg.dispatch_deliveries and deployment.id is not None:
        deliver_id = find_deliver_deployment(facility)
        if deliver_id is not None:
            get_run_logger().info("dispatching ready downloads to deliver-%s", facility)
            return Dispatcher(facility, deliver_id)
        get_run_logger().info("no deliver-%s deployment: delivering in this run", facility)
    return task_submitter(pipeline)


if __name__ == "__main__":
    import sys

    sweep(sys.argv[1])
