"""prefect.yaml deploys, and `prefect block register` works for every block type."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.prefect


def _prefect(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value(), **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=180, check=False)


def test_block_register_for_every_block_type():
    res = _prefect("block", "register", "-m", "pollcat.blocks")
    assert res.returncode == 0, res.stdout + res.stderr
    res = _prefect("block", "type", "ls")
    assert "pollcat-facility" in res.stdout and "pollcat-delivery-target" in res.stdout


def test_prefect_yaml_deploys_both_flows_per_facility_block():
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    sweep = next(d for d in spec["deployments"] if d["name"].startswith("sweep-"))
    assert sweep["concurrency_limit"]["limit"] == 1
    assert sweep["schedules"][0]["interval"] > 0
    # the facility block owns every pipeline setting; the deployment only names the block
    assert sweep["parameters"] == {"facility": "{{ $POLLCAT_FACILITY_BLOCK }}"}
    assert _prefect("work-pool", "create", "pollcat", "--type", "process").returncode == 0
    for block in ("lils", "isis"):
        res = _prefect("deploy", "--all", env_extra={"POLLCAT_HOME": str(REPO),
                                                     "POLLCAT_FACILITY_BLOCK": block})
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    listing = _prefect("deployment", "ls").stdout
    for name in ("pollcat-sweep/sweep-lils", "pollcat-deliver/deliver-lils",
                 "pollcat-sweep/sweep-isis", "pollcat-deliver/deliver-isis"):
        assert name in listing, listing


def test_scheduled_copy_anchors_the_first_sweep_right_after_the_deploy(tmp_path):
    """Unanchored, Prefect's first scheduled sweep came one full interval after the deploy
    (125.6 s at 120 s): the anchor is what makes the first sweep come at once."""
    from datetime import UTC, datetime

    from pollcat.deployments.facilities import FIRST_SWEEP_AFTER_S, scheduled_copy

    now = datetime(2026, 12, 7, 22, 0, tzinfo=UTC)
    copy = yaml.safe_load(scheduled_copy(tmp_path / "p.yaml", REPO / "prefect.yaml",
                                         now=now).read_text())
    sweep = next(d for d in copy["deployments"] if d["name"].startswith("sweep-"))
    (schedule,) = sweep["schedules"]
    assert schedule["interval"] == 120  # prefect.yaml's own interval is kept
    anchor = datetime.fromisoformat(schedule["anchor_date"])
    assert (anchor - now).total_seconds() == FIRST_SWEEP_AFTER_S < 30
    faster = yaml.safe_load(scheduled_copy(tmp_path / "q.yaml", REPO / "prefect.yaml",
                                           interval_s=10, now=now).read_text())
    assert next(d for d in faster["deployments"]
                if d["name"].startswith("sweep-"))["schedules"][0]["interval"] == 10
    # a facility's own anchor wins
    own = tmp_path / "own.yaml"
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    spec["deployments"][0]["schedules"][0]["anchor_date"] = "2026-01-01T03:00:00+00:00"
    own.write_text(yaml.safe_dump(spec))
    kept = yaml.safe_load(scheduled_copy(tmp_path / "r.yaml", own, now=now).read_text())
    assert kept["deployments"][0]["schedules"][0]["anchor_date"] == "2026-01-01T03:00:00+00:00"


def test_bootstrap_deploy_saves_the_anchor_on_the_server(monkeypatch):
    from datetime import UTC, datetime

    from prefect.settings import PREFECT_API_URL

    from pollcat.deployments.facilities import FIRST_SWEEP_AFTER_S, deploy_facility

    _prefect("work-pool", "create", "pollcat", "--type", "process")  # may exist already
    before = datetime.now(UTC)
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    deploy_facility("anchored", project_dir=REPO)
    listing = _prefect("deployment", "inspect", "pollcat-sweep/sweep-anchored").stdout
    anchors = [datetime.fromisoformat(s) for s in
               __import__("re").findall(r"'anchor_date': '([^']+)'", listing)]
    assert anchors, listing
    lag = (anchors[0] - before).total_seconds()
    assert FIRST_SWEEP_AFTER_S - 1 <= lag <= FIRST_SWEEP_AFTER_S + 60, listing
