"""The pipeline steps as Prefect tasks. Each wraps one `Pipeline` method and nothing more.

No task retries: what is retried, where and how often is decided once (docs/architecture.md):
HTTP calls retry at the session, broken streams resume in the transfer engine, and everything
else is the next sweep's job under the download's deadline. Retrying here too would multiply.
"""

from __future__ import annotations

import threading
import time

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from pollcat.pipeline import Outcome, Pipeline
from pollcat.topcat import Download


@task(name="discover", cache_policy=NO_CACHE)
def discover(pipeline: Pipeline) -> list[Download]:
    downloads = pipeline.discover()
    get_run_logger().info("found %d download(s) to work on: %s", len(downloads),
                          [d.id for d in downloads])
    return downloads


@task(name="deliver", task_run_name="deliver-{download.facility_name}-{download.id}",
      cache_policy=NO_CACHE)
def deliver(pipeline: Pipeline, download: Download, prepared_id: str) -> Outcome:
    """Transfer, verify, hooks and COMPLETE, with a progress artifact for long transfers."""
    progress = _Progress(download)
    outcome = pipeline.deliver(download, prepared_id, on_progress=progress.update)
    progress.finish()
    get_run_logger().info("download %s: %s (%d files, %.1f MB/s) %s", download.id,
                          outcome.outcome, outcome.files, outcome.mb_per_s, outcome.reason)
    return outcome


@task(name="failed", task_run_name="failed-{facility}-{download_id}", cache_policy=NO_CACHE)
def record_failure(facility: str, download_id: int, reason: str):
    """A Failed task run an operator finds by the download's id, with the reason as message."""
    get_run_logger().error("download %s of %s failed permanently: %s", download_id, facility,
                           reason)
    return Failed(message=reason)


class _Progress:
    """Updates a progress artifact at most every 2 s (from the transfer's worker threads)."""

    def __init__(self, download: Download):
        self._id = create_progress_artifact(
            progress=0.0, description=f"{download.facility_name} download {download.id} "
            f"({download.file_name})")
        self._last = 0.0
        self._lock = threading.Lock()

    def update(self, done: int, total: int) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last < 2.0:
                return
            self._last = now
        pct = 100.0 * done / total if total else 100.0
        try:
            update_progress_artifact(self._id, min(pct, 100.0))
        except Exception:  # noqa: BLE001 - progress display must never fail a transfer
            pass

    def finish(self) -> None:
        try:
            update_progress_artifact(self._id, 100.0)
        except Exception:  # noqa: BLE001
            pass
