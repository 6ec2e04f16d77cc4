"""One pair of deployments (`sweep-<block>`, `deliver-<block>`) per facility block.

`prefect.yaml` stays the single declaration of what a deployment is; this module only runs
`prefect deploy --all` once per facility block with `POLLCAT_FACILITY_BLOCK` set, which is
exactly what an operator would type by hand. Prefect validates a schedule's `interval` before
it fills in templates, so a different interval (tests, the demo, a busy facility) is deployed
from a copy of `prefect.yaml` that differs in that one number.

That copy also anchors each interval schedule a few seconds after the deploy
(`FIRST_SWEEP_AFTER_S`). Without an anchor Prefect anchors the schedule at the moment the
deployment is saved, which is already past when its scheduler first looks, so the first sweep
came one whole interval later (125.6 s at the default 120 s). With it, the scheduler's
recent-deployments loop (every 5 s) makes the first run, an ordinary auto-scheduled one,
about `FIRST_SWEEP_AFTER_S` after the deploy; a facility that writes its own `anchor_date`
in `prefect.yaml` keeps it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml
from prefect.client.orchestration import PrefectClient

FACILITY_BLOCK_TYPE = "pollcat-facility"
#: The first scheduled sweep runs this long after `deploy_facility` writes the schedule:
#: long enough for `prefect deploy` to save it, well inside the scheduler's 5 s look-ahead.
FIRST_SWEEP_AFTER_S = 20.0


def default_project_dir() -> Path:
    """The checkout holding `prefect.yaml`: `$POLLCAT_HOME` (where workers run the flows
    from), else the working directory."""
    return Path(os.environ.get("POLLCAT_HOME") or Path.cwd())


async def facility_block_names(client: PrefectClient) -> list[str]:
    """Names of the saved (non-anonymous) pollcat facility blocks."""
    docs = await client.read_block_documents_by_type(FACILITY_BLOCK_TYPE, include_secrets=False)
    return sorted(d.name for d in docs if d.name and not d.is_anonymous)


def scheduled_copy(into: Path, source: Path, *, interval_s: float | None = None,
                   now: datetime | None = None) -> Path:
    """A copy of `source` whose interval schedules are anchored `FIRST_SWEEP_AFTER_S` after
    `now` (unless they name their own `anchor_date`) and, given `interval_s`, fire that often."""
    first = (now or datetime.now(UTC)) + timedelta(seconds=FIRST_SWEEP_AFTER_S)
    spec = yaml.safe_load(source.read_text())
    for dep in spec["deployments"]:
        for schedule in dep.get("schedules") or []:
            if "interval" not in schedule:
                continue
            if interval_s is not None:
                schedule["interval"] = interval_s
            schedule.setdefault("anchor_date", first.isoformat())
            schedule.setdefault("timezone", "UTC")
    into.write_text(yaml.safe_dump(spec, sort_keys=False))
    return into


def deploy_facility(block_name: str, *, sweep_interval_s: float | None = None,
                    project_dir: Path | None = None) -> None:
    """`prefect --no-prompt deploy --all` from `project_dir` (a checkout: `prefect.yaml` and
    the `flows/` entry points) for one facility block; workers run the flows from
    `$POLLCAT_HOME`, which defaults to the same checkout."""
    project_dir = (project_dir or default_project_dir()).resolve()
    if not (project_dir / "prefect.yaml").is_file():
        raise FileNotFoundError(f"no prefect.yaml in {project_dir}: run from the pollcat "
                                "checkout or set POLLCAT_HOME to it")
    env = dict(os.environ, POLLCAT_FACILITY_BLOCK=block_name,
               POLLCAT_HOME=os.environ.get("POLLCAT_HOME") or str(project_dir))
    with tempfile.TemporaryDirectory(prefix="pollcat-deploy-") as tmp:
        copy = scheduled_copy(Path(tmp) / "prefect.yaml", project_dir / "prefect.yaml",
                              interval_s=sweep_interval_s)
        args = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all",
                "--prefect-file", str(copy)]
        res = subprocess.run(args, cwd=project_dir, env=env, capture_output=True, text=True,
                             check=False, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise RuntimeError(f"prefect deploy for facility block {block_name!r} failed "
                           f"(exit {res.returncode}):\n{res.stdout[-3000:]}{res.stderr[-3000:]}")
