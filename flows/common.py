"""How the flows fan out one batch of downloads with per-download isolation."""

from __future__ import annotations

from prefect.futures import wait
from prefect.utilities.annotations import unmapped

from blocks.facility import PollcatFacility
from pollcat import logsafe
from pollcat.pipeline import Outcome, Pipeline
from pollcat.topcat import Download
from tasks.steps import deliver, poll, prepare


def load_pipeline(facility_block: str) -> Pipeline:
    """The facility block (and the target blocks it routes to) are the whole configuration.

    Called first in every flow run, so it also puts the redaction on Prefect's handlers."""
    logsafe.install()
    return Pipeline(PollcatFacility.load(facility_block).pipeline_config())


def _error(future) -> BaseException:
    err = future.result(raise_on_failure=False)
    return err if isinstance(err, BaseException) else RuntimeError(str(future.state))


def run_downloads(pipeline: Pipeline, downloads: list[Download],
                  poll_budget_s: float | None = None) -> list[Outcome]:
    """prepare.map → poll → deliver; a failed step ends only its own download's chain."""
    outcomes: dict[int, Outcome] = {}
    for d in downloads:
        settled = pipeline.settled(d)
        if settled is not None:
            outcomes[d.id] = settled
    todo = [d for d in downloads if d.id not in outcomes]
    prepared_f = prepare.map(unmapped(pipeline), todo)
    wait(prepared_f)
    polls = {}
    for d, f in zip(todo, prepared_f, strict=True):
        if f.state.is_completed():
            polls[d.id] = (d, f.result(), poll.submit(pipeline, d, f.result(), poll_budget_s))
        else:
            outcomes[d.id] = pipeline.fail(d, _error(f))
    wait([p[2] for p in polls.values()])
    deliveries = {}
    for d, prepared, f in polls.values():
        if not f.state.is_completed():
            outcomes[d.id] = pipeline.fail(d, _error(f))
        elif not f.result():
            outcomes[d.id] = pipeline.waiting(d)
        else:
            deliveries[d.id] = (d, deliver.submit(pipeline, d, prepared.prepared_id))
    wait([f for _, f in deliveries.values()])
    for d, f in deliveries.values():
        outcomes[d.id] = f.result() if f.state.is_completed() else pipeline.fail(d, _error(f))
    return [outcomes[d.id] for d in downloads]
