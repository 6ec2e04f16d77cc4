"""A delivery to a Globus target: files written under the collection root, then a read rule
for the user's identity before COMPLETE, its id in the ledger, the folder link in the e-mail."""

from __future__ import annotations

import pytest

from pollcat.state import StateStore
from pollcat.states import OutcomeKind
from tests.conftest import scenario
from tests.pollcat.test_globus import CLIENT_ID, COLLECTION, SECRET, SPEC, identity, rules
from tests.support import delivered_files, pipeline_for, statuses, wait_for, wait_status

pytest.importorskip("globus_sdk")
from simfacility.globus import running_globus  # noqa: E402

ALICE = {"user": "simple/alice", "transport": "globus", "file_name": "alice_run42",
         "email": "alice@example.org", "items": [{"investigation": "INV-001", "dataset": "run-42"}]}


def test_delivery_grants_the_user_a_globus_read_rule(make_sim, tmp_path):
    with running_globus(SPEC) as globus:
        sim = make_sim(scenario(downloads=[ALICE], topcat={
            "poll_delay_s": 0, "poll_interval_wait_s": 0.2,
            "mail": {"bodies": {"globus": "Your data: ${customValue}"}}}))
        wait_status(sim.url, "RESTORING")
        settings = {"client_id": CLIENT_ID, "client_secret": SECRET,
                    "collection_id": COLLECTION, "username_template": "{user}@idp.example.org",
                    "auth_url": globus.auth_url, "transfer_url": globus.transfer_url}
        pipe = pipeline_for(sim, tmp_path, globus=settings)
        (out,) = pipe.sweep()
        assert out.outcome == OutcomeKind.COMPLETED, out
        assert statuses(sim.url) == {1: "COMPLETE"}
        assert len(delivered_files(tmp_path / "target/globus")) == 2
        (rule,) = [r for r in rules(globus).values()
                   if r["principal"] == identity(globus, "alice@idp.example.org")]
        assert rule["path"] == "/alice/alice_run42/" and rule["permissions"] == "r"
        grants = StateStore(tmp_path / "state", "LILS").get(1).grants
        assert [g["rule_id"] for g in grants if g["hook"] == "globus"] == [rule["id"]]
        assert SECRET not in str(grants)
        (mail,) = wait_for(lambda: sim.facility.mail_outbox, what="the e-mail")
        assert f"origin_id={COLLECTION}" in mail["body"]

        # a forced rerun adopts the existing rule instead of making a second one
        pipe.forget(1)
        pipe.run_one(pipe.download_by_id(1))
        assert len([r for r in rules(globus).values() if r["path"] == "/alice/alice_run42/"
                    ]) == 1


def test_retention_removes_the_data_and_the_rule_and_reconciles_orphans(make_sim, tmp_path):
    """The cleanup flow's work on a Globus target: the delivery past retention is removed, its
    rule revoked (a rule Globus already dropped counts as revoked), and a rule of pollcat's on
    a folder no delivery owns any more is removed as an orphan; others' rules are kept."""
    import datetime as dt

    with running_globus(SPEC) as globus:
        sim = make_sim(scenario(downloads=[ALICE]))
        wait_status(sim.url, "RESTORING")
        settings = {"client_id": CLIENT_ID, "client_secret": SECRET,
                    "collection_id": COLLECTION, "username_template": "{user}@idp.example.org",
                    "auth_url": globus.auth_url, "transfer_url": globus.transfer_url}
        access = {"accounts": "none", "acl_user": False, "default_acl": False,
                  "retention_days": 15}
        pipe = pipeline_for(sim, tmp_path, globus=settings, access=access)
        (out,) = pipe.sweep()
        assert out.outcome == OutcomeKind.COMPLETED, out
        mine = {rid for rid, r in rules(globus).items() if r["path"] == "/alice/alice_run42/"}
        assert len(mine) == 1
        # an orphan: pollcat's kind of rule on a folder no delivery owns, old enough to judge
        grants = pipe._globus.client(pipe.cfg.routes["globus"])
        old = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
        orphan = grants.grant("bob/gone_download", "simple/alice", now=old)
        globus.state.collections[COLLECTION].rules[orphan.rule_id]["create_time"] = \
            old.isoformat()

        lines: list[str] = []
        assert pipe.cleanup(out=lines.append) == 0  # nothing is old enough yet
        assert delivered_files(tmp_path / "target/globus") and mine <= set(rules(globus))
        assert orphan.rule_id not in rules(globus)  # the orphan went

        StateStore(tmp_path / "state", "LILS").update(1, delivered_at="2000-01-01T00:00:00Z")
        assert pipe.cleanup(out=lines.append) == 0
        assert not delivered_files(tmp_path / "target/globus")
        assert not mine & set(rules(globus))  # its rule revoked with the data
        ledger = StateStore(tmp_path / "state", "LILS").get(1)
        assert all(g.get("revoked") for g in ledger.grants if g["hook"] == "globus")


@pytest.mark.parametrize("gone", ["deleted", "expired"])
def test_cleanup_counts_a_rule_already_gone_as_revoked_and_reruns_cleanly(make_sim, tmp_path,
                                                                        gone):
    """A rule deleted out of band (Globus: 404 `AccessRuleNotFound`) or dropped at its
    `expiration_date` does not stop retention: the delivery is removed, the ledger marks the
    rule revoked, cleanup exits 0, and a second cleanup has nothing left to do."""
    with running_globus(SPEC) as globus:
        sim = make_sim(scenario(downloads=[ALICE]))
        wait_status(sim.url, "RESTORING")
        settings = {"client_id": CLIENT_ID, "client_secret": SECRET,
                    "collection_id": COLLECTION, "username_template": "{user}@idp.example.org",
                    "auth_url": globus.auth_url, "transfer_url": globus.transfer_url}
        access = {"accounts": "none", "acl_user": False, "default_acl": False,
                  "retention_days": 15}
        pipe = pipeline_for(sim, tmp_path, globus=settings, access=access)
        (out,) = pipe.sweep()
        assert out.outcome == OutcomeKind.COMPLETED, out
        (rule_id,) = [rid for rid, r in rules(globus).items()
                      if r["path"] == "/alice/alice_run42/"]
        if gone == "deleted":
            del rules(globus)[rule_id]
        else:
            rules(globus)[rule_id]["expiration_date"] = "2020-01-01T00:00:00+00:00"
        StateStore(tmp_path / "state", "LILS").update(1, delivered_at="2000-01-01T00:00:00Z")

        lines: list[str] = []
        assert pipe.cleanup(out=lines.append) == 0
        assert not delivered_files(tmp_path / "target/globus")
        assert f"download 1: Globus rule {rule_id} revoked (it was already gone)" in lines
        ledger = StateStore(tmp_path / "state", "LILS").get(1)
        assert [g.get("revoked") for g in ledger.grants if g["hook"] == "globus"] == [True]
        deletes = [r for r in globus.state.requests if r[0] == "DELETE"]
        assert len(deletes) == 1

        lines.clear()
        assert pipe.cleanup(out=lines.append) == 0     # the second run: nothing to revoke
        assert not any("Globus rule" in line for line in lines)
        assert len([r for r in globus.state.requests if r[0] == "DELETE"]) == 1
