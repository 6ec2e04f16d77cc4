"""Deliver one download by id: an operator's retry button, and the unit a dispatcher starts."""

from __future__ import annotations

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import load_pipeline, settle_run, task_submitter
from tasks.report import publish_report


@flow(name="pollcat-deliver", flow_run_name="deliver-{facility}-{download_id}",
      task_runner=ThreadPoolTaskRunner(max_workers=4))
def deliver_download(download_id: int, facility: str, force: bool = False):
    """`force` forgets pollcat's earlier verdict (expired, attempts) for this download — use it
    after fixing the cause (resuming the download in TopCAT's admin page is enough on its own
    when TopCAT had accepted EXPIRED)."""
    pipeline = load_pipeline(facility)
    try:
        if force:
            pipeline.forget(download_id)
        d = pipeline.download_by_id(download_id)
        outcome = pipeline.run_one(d, submit=task_submitter(pipeline))
        publish_report(pipeline.cfg.facility.name, [outcome])
        return settle_run([outcome], pipeline.cfg.facility.name) or outcome.row()
    finally:
        pipeline.clients.close()


if __name__ == "__main__":
    import sys

    deliver_download(int(sys.argv[1]), sys.argv[2])
