"""Neither the functional account's password nor any session id reaches a log record, even at
DEBUG with urllib3's request lines."""

from __future__ import annotations

import logging

from tests.conftest import scenario
from tests.support import downloads, pipeline_for, wait_status

ALICE = {"user": "simple/alice", "transport": "globus", "file_name": "alice_run42",
         "email": "alice@example.org", "items": [{"investigation": "INV-001", "dataset": "run-42"}]}


def test_no_password_or_session_in_logs(make_sim, tmp_path, caplog):
    sim = make_sim(scenario(downloads=[ALICE]))
    wait_status(sim.url, "RESTORING")
    user_session = next(iter(downloads(sim.url).values()))["sessionId"]
    caplog.set_level(logging.DEBUG)
    pipe = pipeline_for(sim, tmp_path)
    (out,) = pipe.sweep()
    assert out.outcome == "completed"
    own_session = pipe.clients.icat._sid
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "sessionId=***" in text  # urllib3 did log the request lines...
    assert own_session and own_session not in text  # ...but without the session
    assert "pollpass" not in text and user_session not in text
