"""Deliver one download by id: the sweep's unit of work, and the operator's retry button."""

from __future__ import annotations

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import load_pipeline, run_downloads
from tasks.report import publish_report


@flow(name="pollcat-deliver", flow_run_name="deliver-{facility}-{download_id}",
      task_runner=ThreadPoolTaskRunner(max_workers=4))
def deliver_download(download_id: int, facility: str = "default",
                     poll_budget_s: float | None = None, force: bool = False) -> dict:
    """`force` forgets pollcat's earlier verdict (expired, attempts) for this download — use it
    after fixing the cause and resuming the download in TopCAT's admin page."""
    pipeline = load_pipeline(facility)
    try:
        if force:
            pipeline.forget(download_id)
        d = pipeline.download_by_id(download_id)
        outcome = run_downloads(pipeline, [d], poll_budget_s)[0]
        publish_report(pipeline.cfg.facility.name, [outcome])
        return outcome.row()
    finally:
        pipeline.clients.close()


if __name__ == "__main__":
    import sys

    deliver_download(int(sys.argv[1]))
