"""Peak RSS of a pollcat sweep delivering one large file (4 GiB), next to `curl -o`.

The sweep runs in a child process so that its peak RSS (`wait4`'s `ru_maxrss`) is its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import login, query, sim_process
from bench.throughput import scenario

CHILD = """
import sys
from pathlib import Path
from bench.common import pipeline, timed_sweep
outcomes, wall = timed_sweep(pipeline(sys.argv[1], Path(sys.argv[2]), "r", facility="BENCH"))
assert [o.outcome for o in outcomes] == ["completed"], outcomes
print(wall)
"""


def _peak_mb(cmd: list[str], **kw) -> tuple[float, str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, **kw)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {out[-500:]}")
    return usage.ru_maxrss / 1024, out


def main(size: int = 4 << 30) -> dict:
    work = Path(tempfile.mkdtemp(prefix="pollcat-rss-"))
    with sim_process(scenario(size)) as (url, _):
        sid = login(url, "pollcat", "pollpass")
        df = query(url, sid, "SELECT df FROM Datafile df")[0]["Datafile"]
        curl_mb, _ = _peak_mb(["curl", "-s", "-o", str(work / "curl.raw"),
                               f"{url}/ids/getData?sessionId={sid}&datafileIds={df['id']}"])
        (work / "curl.raw").unlink()
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        pollcat_mb, wall = _peak_mb([sys.executable, "-c", CHILD, url, str(work)], env=env)
    shutil.rmtree(work, ignore_errors=True)
    result = {"bytes": size, "pollcat_peak_rss_MB": round(pollcat_mb, 1),
              "curl_peak_rss_MB": round(curl_mb, 1), "pollcat_sweep_s": round(float(wall), 1)}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 4 << 30)
