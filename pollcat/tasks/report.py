"""What an operator reads in the Prefect UI: the sweep's table, a per-facility status of every
download pollcat knows, and events for pollcat's own conditions that automations match."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from pollcat.pipeline import Outcome, Pipeline
from pollcat.report import table_rows
from pollcat.states import OutcomeKind


def artifact_key(kind: str, facility: str) -> str:
    return f"pollcat-{kind}-" + "".join(c if c.isalnum() else "-" for c in facility.lower())


@task(name="report", cache_policy=NO_CACHE)
def publish_report(facility: str, outcomes: list[Outcome]) -> list[dict]:
    """The sweep's table; an idle sweep publishes nothing, so the last real one stays."""
    rows = table_rows(outcomes)
    if rows:
        create_table_artifact(key=artifact_key("sweep", facility), table=rows,
                              description=f"pollcat sweep of {facility}: {len(rows)} download(s)")
    return rows


@task(name="status", cache_policy=NO_CACHE)
def publish_status(pipeline: Pipeline, outcomes: list[Outcome]) -> int:
    """Every download pollcat knows (waiting since when, retrying why, expired why), from the
    ledger; refreshed only by sweeps that worked on something."""
    if not outcomes:
        return 0
    rows = pipeline.status_rows()
    facility = pipeline.facility_name
    create_table_artifact(key=artifact_key("status", facility), table=rows,
                          description=f"pollcat: the downloads of {facility} it knows, "
                                      "newest first")
    return len(rows)


def emit_condition_events(pipeline: Pipeline, outcomes: list[Outcome]) -> int:
    """Prefect events for conditions an operator must hear about, whatever the run's state:
    a target that cannot take data (`pollcat.target.held`), a restore that takes too long
    (`pollcat.download.stuck`), a download given up (`pollcat.download.expired`)."""
    facility = pipeline.facility_name
    sent, held = 0, set()
    stuck_after = timedelta(hours=pipeline.cfg.alert_waiting_hours)
    for o in outcomes:
        resource = {"prefect.resource.id": f"pollcat.download.{facility}.{o.download_id}",
                    "prefect.resource.name": f"{facility} download {o.download_id}",
                    "pollcat.facility": facility, "pollcat.transport": o.transport}
        if o.outcome == OutcomeKind.HELD and o.transport not in held:
            held.add(o.transport)
            emit_event("pollcat.target.held", resource={
                "prefect.resource.id": f"pollcat.target.{facility}.{o.transport}",
                "prefect.resource.name": f"{facility} target of {o.transport}",
                "pollcat.facility": facility}, payload={"reason": o.reason})
            sent += 1
        elif o.outcome == OutcomeKind.EXPIRED:
            emit_event("pollcat.download.expired", resource=resource,
                       payload={"reason": o.reason, "user": o.user})
            sent += 1
        elif o.outcome == OutcomeKind.WAITING:
            first = pipeline.state.get(o.download_id).first_seen
            if first and datetime.now(UTC) - datetime.fromisoformat(first) > stuck_after:
                emit_event("pollcat.download.stuck", resource=resource,
                           payload={"waiting_since": first, "reason": o.reason})
                sent += 1
    return sent
