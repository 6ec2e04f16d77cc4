"""Accounts and permissions through the whole pipeline: after COMPLETE the requesting user can
read every delivered file and directory and another user cannot (proved by reading as them),
every grant is in the ledger, a rerun changes nothing, and retention removes the delivery."""

from __future__ import annotations

import os

import pytest

from pollcat.state import StateStore
from pollcat.states import OutcomeKind
from tests.conftest import scenario
from tests.pollcat.test_access_fixtures import (
    account_db,  # noqa: F401  (fixture)
    can_read,
    target_root,  # noqa: F401  (fixture)
)
from tests.support import delivered_files, pipeline_for, statuses, wait_status

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="access tests run as root")

ALICE = {"user": "simple/alice", "transport": "globus", "file_name": "alice_run42",
         "email": "alice@example.org", "items": [{"investigation": "INV-001", "dataset": "run-42"}]}


def test_delivered_data_is_readable_by_its_user_only(make_sim, tmp_path, account_db,  # noqa: F811
                                                     target_root):  # noqa: F811
    alice, bob = account_db.add_user("alice"), account_db.add_user("bob")
    sim = make_sim(scenario(downloads=[ALICE]))
    wait_status(sim.url, "RESTORING")
    access = {"account_db_root": str(account_db.root), "retention_days": 15}
    pipe = pipeline_for(sim, tmp_path, target_url=f"file://{target_root}", access=access)
    (out,) = pipe.sweep()
    assert out.outcome == OutcomeKind.COMPLETED, out
    assert statuses(sim.url) == {1: "COMPLETE"}
    root = target_root / "globus"
    delivery = root / "alice/alice_run42"
    # pollcat's own staging directory (.pollcat: claim, part files) stays private to pollcat
    objects = [p for p in [delivery, *delivery.rglob("*")] if ".pollcat" not in p.parts]
    assert not can_read(bob, delivery / ".pollcat")
    assert len(delivered_files(root)) == 2 and len(objects) >= 7
    for path in objects:
        assert can_read(alice, path), path
        assert not can_read(bob, path), path

    ledger = StateStore(tmp_path / "state", "LILS")
    grants = ledger.get(1).grants
    assert grants and {g["kind"] for g in grants} >= {"grant-acl"}
    assert all(g["download_id"] == 1 for g in grants)

    # a rerun (an operator's forced retry) copies nothing and grants nothing new
    pipe.forget(1)
    ledger.update(1, grants=grants)
    again = pipe.run_one(pipe.download_by_id(1))
    assert again.outcome in (OutcomeKind.COMPLETED, OutcomeKind.SKIPPED)
    assert ledger.get(1).grants == grants

    # retention: a dry run changes nothing; then the old delivery is removed, grants revoked
    ledger.update(1, delivered_at="2000-01-01T00:00:00+00:00")
    lines: list[str] = []
    assert pipe.cleanup(dry_run=True, out=lines.append) == 0
    assert any("would-remove" in line for line in lines) and delivered_files(root)
    assert pipe.cleanup(out=lines.append) == 0
    assert not delivered_files(root)
    assert ledger.get(1).removed and ledger.get(1).removed[-1]["outcome"] == "removed"


def test_a_missing_account_is_a_clear_permanent_reason(make_sim, tmp_path, account_db,  # noqa: F811
                                                       target_root):  # noqa: F811
    sim = make_sim(scenario(downloads=[ALICE]))
    wait_status(sim.url, "RESTORING")
    pipe = pipeline_for(sim, tmp_path, target_url=f"file://{target_root}",
                        access={"account_db_root": str(account_db.root)})
    (out,) = pipe.sweep()
    assert out.outcome == OutcomeKind.EXPIRED and "alice" in out.reason
    assert statuses(sim.url) == {1: "EXPIRED"}  # never COMPLETE with data the user can't read
