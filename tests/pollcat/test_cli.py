"""`pollcat sweep` from the command line: same code path, exit codes, JSON summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import scenario
from tests.support import delivered_files, statuses

ALICE = {"user": "simple/alice", "transport": "globus", "file_name": "alice_run42",
         "email": "alice@example.org", "items": [{"investigation": "INV-001", "dataset": "run-42"}]}


def _run(args: list[str], password: str | None = "pollpass", timeout: float = 120):
    env = {k: v for k, v in os.environ.items() if k != "POLLCAT_PASSWORD"}
    if password is not None:
        env["POLLCAT_PASSWORD"] = password
    return subprocess.run([sys.executable, "-m", "pollcat.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def _args(url: str, tmp_path, *extra: str) -> list[str]:
    return ["sweep", "--icat-url", url, "--ids-url", url, "--topcat-url", url,
            "--facility-name", "LILS", "--username", "pollcat",
            "--route", f"globus=file://{tmp_path / 'out'}", "--state-dir", str(tmp_path / "st"),
            "--poll-budget-seconds", "5", "--json", *extra]


def test_cli_sweep_delivers_and_reports_json(make_sim, tmp_path):
    sim = make_sim(scenario(downloads=[ALICE]))
    summary = None
    for _ in range(5):
        res = _run(_args(sim.url, tmp_path))
        assert res.returncode == 0, res.stderr
        summary = json.loads(res.stdout)
        if set(statuses(sim.url).values()) == {"COMPLETE"}:
            break
    assert summary["facility"] == "LILS"
    assert [d["outcome"] for d in summary["downloads"]] == ["completed"]
    assert summary["downloads"][0]["files"] == 2
    assert len(delivered_files(tmp_path / "out")) == 2
    assert "pollpass" not in res.stderr and "pollpass" not in res.stdout


def test_cli_exit_codes(make_sim, tmp_path):
    sim = make_sim(scenario())
    assert _run(_args(sim.url, tmp_path), password=None).returncode == 2
    res = _run(_args(sim.url, tmp_path, "--route", "broken"))
    assert res.returncode == 2 and "TRANSPORT=URL" in res.stderr
    res = _run(_args(sim.url, tmp_path), password="wrong")
    assert res.returncode == 2 and "refused the functional account" in res.stderr
    res = _run(_args("http://127.0.0.1:9", tmp_path))
    assert res.returncode == 3 and "cannot reach" in res.stderr
    assert "wrong" not in res.stderr
