"""Idempotent set-up of a Prefect server for pollcat: block types and the process work pool.

    python -m deployments.bootstrap            # register blocks, create the work pool
Then save the facility and target blocks (README, "Configure") and `prefect deploy --all`.
"""

from __future__ import annotations

import subprocess
import sys

from prefect.utilities.asyncutils import run_coro_as_sync

from blocks import DeliveryTarget, PollcatFacility

POOL = "pollcat"


def register_blocks() -> None:
    for block in (PollcatFacility, DeliveryTarget):
        run_coro_as_sync(block.register_type_and_schema())
        print(f"registered block type {block.get_block_type_slug()}")


def ensure_work_pool(name: str = POOL) -> None:
    found = subprocess.run([sys.executable, "-m", "prefect", "work-pool", "inspect", name],
                           capture_output=True, text=True, check=False)
    if found.returncode == 0:
        print(f"work pool {name} exists")
        return
    subprocess.run([sys.executable, "-m", "prefect", "work-pool", "create", name, "--type",
                    "process"], check=True)


if __name__ == "__main__":
    register_blocks()
    ensure_work_pool()
