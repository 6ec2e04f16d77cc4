"""Deliver one download by id: an operator's retry button, and the unit a dispatcher starts."""

from __future__ import annotations

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from pollcat.flows.common import open_pipeline, settle_run, task_submitter
from pollcat.tasks.report import emit_condition_events, publish_report, publish_status


@flow(name="pollcat-deliver", flow_run_name="deliver-{facility}-{download_id}",
      task_runner=ThreadPoolTaskRunner(max_workers=4))
def deliver_download(download_id: int, facility: str, force: bool = False):
    """`force` forgets pollcat's earlier verdict (expired, attempts) for this download — use it
    after fixing the cause (resuming the download in TopCAT's admin page is enough on its own
    when TopCAT had accepted EXPIRED)."""
    with open_pipeline(facility) as pipeline:
        if force:
            pipeline.forget(download_id)
        d = pipeline.download_by_id(download_id)
        outcome = pipeline.run_one(d, submit=task_submitter(pipeline))
        publish_report(pipeline.facility_name, [outcome])
        publish_status(pipeline, [outcome])
        emit_condition_events(pipeline, [outcome])
        return settle_run([outcome], pipeline.facility_name) or outcome.row()


if __name__ == "__main__":
    import sys

    deliver_download(int(sys.argv[1]), sys.argv[2])
