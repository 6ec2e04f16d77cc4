"""Peak RSS of a pollcat sweep delivering one large file (4 GiB), next to `curl -o`.

Each runs in a child process; its peak is the kernel's high-water mark `VmHWM` of that
process (`ru_maxrss` would not do: it keeps the forking parent's size across `exec`), read
by the pollcat child itself at its end, and sampled while curl runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import login, query, sim_process
from bench.throughput import scenario

CHILD = """
import sys
from pathlib import Path
from bench.common import pipeline, timed_sweep
outcomes, wall = timed_sweep(pipeline(sys.argv[1], Path(sys.argv[2]), "r", facility="BENCH"))
assert [o.outcome for o in outcomes] == ["completed"], outcomes
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(wall, int(hwm.split()[1]))
"""


def _hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return int(next(line for line in f if line.startswith("VmHWM")).split()[1])
    except (OSError, StopIteration):
        return 0


def _curl_peak_mb(cmd: list[str]) -> float:
    proc = subprocess.Popen(cmd)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _hwm_kb(proc.pid))
        time.sleep(0.05)
    if proc.returncode:
        raise RuntimeError(f"curl failed ({proc.returncode})")
    return peak / 1024


def main(size: int = 4 << 30) -> dict:
    work = Path(tempfile.mkdtemp(prefix="pollcat-rss-"))
    with sim_process(scenario(size)) as (url, _):
        sid = login(url, "pollcat", "pollpass")
        df = query(url, sid, "SELECT df FROM Datafile df")[0]["Datafile"]
        curl_mb = _curl_peak_mb(["curl", "-s", "-o", str(work / "curl.raw"),
                                 f"{url}/ids/getData?sessionId={sid}&datafileIds={df['id']}"])
        (work / "curl.raw").unlink()
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        res = subprocess.run([sys.executable, "-c", CHILD, url, str(work)], env=env,
                             capture_output=True, text=True, check=True)
        wall, hwm_kb = res.stdout.split()[-2:]
        pollcat_mb = int(hwm_kb) / 1024
    shutil.rmtree(work, ignore_errors=True)
    result = {"bytes": size, "pollcat_peak_rss_MB": round(pollcat_mb, 1),
              "curl_peak_rss_MB": round(curl_mb, 1), "pollcat_sweep_s": round(float(wall), 1)}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 4 << 30)
