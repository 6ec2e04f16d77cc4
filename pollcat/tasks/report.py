"""The sweep report: a table artifact an operator reads in the Prefect UI."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from pollcat.pipeline import Outcome
from pollcat.report import table_rows


@task(name="report", cache_policy=NO_CACHE)
def publish_report(facility: str, outcomes: list[Outcome]) -> list[dict]:
    rows = table_rows(outcomes)
    key = "pollcat-sweep-" + "".join(c if c.isalnum() else "-" for c in facility.lower())
    create_table_artifact(key=key, table=rows or [{"outcome": "nothing to do"}],
                          description=f"pollcat sweep of {facility}: {len(rows)} download(s)")
    return rows
