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
