"""`make bench`: every benchmark, results as JSON under bench/results/."""

from __future__ import annotations

import json
import platform
from datetime import UTC, datetime
from pathlib import Path

from bench import sim_scale, throughput


def main() -> None:
    out = {"when": datetime.now(UTC).isoformat(timespec="seconds"),
           "machine": f"{platform.machine()} {platform.python_version()}",
           "sim_scale": sim_scale.main(), "throughput_1GiB": throughput.main()}
    path = Path(__file__).parent / "results" / "latest.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"written {path}")


if __name__ == "__main__":
    main()
