"""The names of the per-download state machine: TopCAT's statuses, pollcat's verdicts and the
outcome of one sweep for one download.

They are `StrEnum`s so that they compare equal to the strings TopCAT sends and the reports show,
while a typo in code is an AttributeError instead of a silently wrong branch.
"""

from __future__ import annotations

from enum import StrEnum


class DownloadStatus(StrEnum):
    """TopCAT's `DownloadStatus` (datagateway-download-api)."""

    PREPARING = "PREPARING"
    RESTORING = "RESTORING"
    COMPLETE = "COMPLETE"
    EXPIRED = "EXPIRED"
    PAUSED = "PAUSED"


class Verdict(StrEnum):
    """What pollcat's ledger says it has done with a download, across sweeps."""

    DELIVERED = "delivered"  # every file verified on the target, manifest written
    COMPLETED = "completed"  # ... and TopCAT accepted COMPLETE (or it was single-level)
    EXPIRED = "expired"  # pollcat gave up; the reason says why


class OutcomeKind(StrEnum):
    """What one sweep did with one download (a row of the report)."""

    COMPLETED = "completed"  # delivered, verified, hooks applied, COMPLETE set
    WAITING = "waiting"  # the IDS is still restoring; checked again next sweep
    RETRY = "retry"  # a transient failure; retried next sweep until the deadline
    HELD = "held"  # the target cannot take data now (full, read-only); no verdict on the download
    EXPIRED = "expired"  # a permanent failure; TopCAT shows EXPIRED
    SKIPPED = "skipped"  # nothing to do (deleted, already completed, status changed)
    LOCKED = "locked"  # another worker owns the download right now
    DISPATCHED = "dispatched"  # handed to a deliver flow run; any worker of the pool delivers it

    @property
    def failed(self) -> bool:
        """An outcome an operator must look at."""
        return self is OutcomeKind.EXPIRED
