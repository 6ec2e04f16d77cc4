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
