"""`pollcat check`: one line per check, the missing privilege named, targets probed, nothing
about any download changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from pollcat.check import Verdict, run_checks
from tests.conftest import scenario
from tests.support import pipeline_for, statuses, wait_status

ALICE = {"user": "simple/alice", "transport": "globus", "file_name": "alice_run42",
         "email": "alice@example.org", "items": [{"investigation": "INV-001", "dataset": "run-42"}]}


def _cli(url: str, target: str, tmp_path, password: str = "pollpass"):
    env = dict(os.environ, POLLCAT_PASSWORD=password)
    return subprocess.run(
        [sys.executable, "-m", "pollcat.cli", "check", "--icat-url", url, "--ids-url", url,
         "--topcat-url", url, "--facility-name", "LILS", "--username", "pollcat",
         "--route", f"globus={target}", "--state-dir", str(tmp_path / "st"), "--json"],
        env=env, capture_output=True, text=True, timeout=60, check=False)


def test_everything_fine(make_sim, tmp_path):
    sim = make_sim(scenario(downloads=[ALICE]))
    wait_status(sim.url, "RESTORING")
    (tmp_path / "out").mkdir()
    res = _cli(sim.url, f"file://{tmp_path / 'out'}", tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = {r["check"]: r for r in json.loads(res.stdout)}
    assert {r["verdict"] for r in rows.values()} <= {"ok", "warn"}
    assert "simple/pollcat" in rows["icat login"]["detail"]
    assert "adminUserNames" in rows["topcat admin"]["detail"]
    assert "probe" in rows["target globus writable"]["detail"]
    assert not list((tmp_path / "out").iterdir())  # the probe is gone
    assert statuses(sim.url) == {1: "RESTORING"}  # nothing changed
    assert "pollpass" not in res.stdout + res.stderr


def test_wrong_password_and_missing_target_are_named(make_sim, tmp_path):
    sim = make_sim(scenario())
    res = _cli(sim.url, f"file://{tmp_path / 'missing'}", tmp_path, password="wrong")
    assert res.returncode == 2
    rows = {r["check"]: r for r in json.loads(res.stdout)}
    assert rows["icat login"]["verdict"] == "fail"
    assert "refused the functional account" in rows["icat login"]["detail"]
    assert rows["target globus reachable"]["verdict"] == "fail"
    assert "wrong" not in res.stdout


def test_the_missing_topcat_admin_right_is_named(make_sim, tmp_path):
    sim = make_sim(scenario())
    sim.add_fault(kind="error", service="topcat", endpoint="admin/*", status=403,
                  code="ForbiddenException",
                  message="please provide a valid facilityName and sessionId")
    pipe = pipeline_for(sim, tmp_path)
    (tmp_path / "target/globus").mkdir(parents=True)
    results = {r.what: r for r in run_checks(pipe.cfg, pipe.clients)}
    assert results["topcat admin"].verdict is Verdict.FAIL
    assert "adminUserNames" in results["topcat admin"].detail
    assert results["icat login"].verdict is Verdict.OK
    assert results["icat read rules"].verdict is Verdict.OK


def test_a_target_root_that_is_a_file_fails(make_sim, tmp_path):
    sim = make_sim(scenario())
    (tmp_path / "target").mkdir()
    (tmp_path / "target/globus").write_text("not a directory")
    pipe = pipeline_for(sim, tmp_path)
    results = {r.what: r for r in run_checks(pipe.cfg, pipe.clients)}
    assert results["target globus reachable"].verdict is Verdict.FAIL
    assert "target globus writable" not in results


def _split(make_sim, *, icat: list[str], topcat: list[str], ids: list[str]):
    return make_sim(scenario(admins=[], icat={"read_all": icat}, ids={"root_user_names": ids},
                             topcat={"admin_user_names": topcat, "poll_delay_s": 0,
                                     "poll_interval_wait_s": 0.2}))


def test_the_three_privileges_are_told_apart(make_sim, tmp_path):
    """ICAT read rules, IDS rootUserNames and TopCAT adminUserNames are granted separately;
    the check names the one that is missing."""
    me = ["simple/pollcat"]
    (tmp_path / "target/globus").mkdir(parents=True)
    cases = {
        "no ICAT read rule": (dict(icat=[], topcat=me, ids=[]),
                              {"icat read rules": Verdict.WARN, "topcat admin": Verdict.OK}),
        "no TopCAT admin": (dict(icat=me, topcat=[], ids=[]),
                            {"icat read rules": Verdict.OK, "topcat admin": Verdict.FAIL}),
        "all three": (dict(icat=me, topcat=me, ids=me),
                      {"icat read rules": Verdict.OK, "topcat admin": Verdict.OK}),
    }
    for name, (privileges, expected) in cases.items():
        sim = _split(make_sim, **privileges)
        pipe = pipeline_for(sim, tmp_path)
        results = {r.what: r for r in run_checks(pipe.cfg, pipe.clients)}
        got = {k: results[k].verdict for k in expected}
        assert got == expected, (name, {k: results[k].line() for k in results})
        ids_root = next(r for k, r in results.items() if k.startswith("ids root"))
        assert ("more than pollcat needs" in ids_root.detail) == bool(privileges["ids"]), name
        if expected["icat read rules"] is Verdict.WARN:
            assert "ICAT read rules" in results["icat read rules"].detail
        if expected["topcat admin"] is Verdict.FAIL:
            assert "adminUserNames" in results["topcat admin"].detail
