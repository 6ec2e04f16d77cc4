"""The pipeline steps as Prefect tasks. Each wraps one `Pipeline` method and nothing more."""

from __future__ import annotations

import threading
import time

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from pollcat.pipeline import Outcome, Pipeline, Prepared
from pollcat.topcat import Download
from tasks.retry import JITTER, RETRY_DELAYS, transient_only


@task(name="discover", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=RETRY_DELAYS,
      retry_jitter_factor=JITTER, retry_condition_fn=transient_only)
def discover(pipeline: Pipeline) -> list[Download]:
    downloads = pipeline.discover()
    get_run_logger().info("found %d download(s) to work on: %s", len(downloads),
                          [d.id for d in downloads])
    return downloads


@task(name="prepare", task_run_name="prepare-{download.facility_name}-{download.id}",
      cache_policy=NO_CACHE, retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_jitter_factor=JITTER, retry_condition_fn=transient_only)
def prepare(pipeline: Pipeline, download: Download) -> Prepared:
    return pipeline.prepare(download)


@task(name="poll", task_run_name="poll-{download.facility_name}-{download.id}",
      cache_policy=NO_CACHE, retries=2, retry_delay_seconds=RETRY_DELAYS,
      retry_jitter_factor=JITTER, retry_condition_fn=transient_only)
def poll(pipeline: Pipeline, download: Download, prepared: Prepared,
         budget_s: float | None = None) -> bool:
    return pipeline.poll(download, prepared, budget_s)


@task(name="deliver", task_run_name="deliver-{download.facility_name}-{download.id}",
      cache_policy=NO_CACHE, retries=2, retry_delay_seconds=RETRY_DELAYS,
      retry_jitter_factor=JITTER, retry_condition_fn=transient_only)
def deliver(pipeline: Pipeline, download: Download, prepared_id: str) -> Outcome:
    """Transfer, verify, hooks and COMPLETE, with a progress artifact for long transfers."""
    progress = _Progress(download)
    outcome = pipeline.deliver(download, prepared_id, on_progress=progress.update)
    progress.finish()
    get_run_logger().info("download %s: %s (%d files, %.1f MB/s)", download.id,
                          outcome.outcome, outcome.files, outcome.mb_per_s)
    return outcome


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
