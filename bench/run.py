"""`make bench`: every benchmark in one run, the physical limits first; JSON under
bench/results/latest.json, a summary of ratios printed at the end (docs/benchmarks.md is
written from it by `python -m bench.report`)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from bench import history, limits, many, rss, sim_scale, throughput, zipsrc
from bench.common import settle_filesystem


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB, "
            f"Python {platform.python_version()}")


def summary(out: dict) -> dict:
    """The goals of issue 8, each with its measured figure."""
    t, m = out["throughput_1GiB"], out["many"]
    return {
        "one 1 GiB file: pollcat / curl -o": t["median_ratio"],
        "one 1 GiB file: pollcat / (curl -o; fsync)": t.get("median_ratio_to_curl_fsync"),
        "one 1 GiB file, idle memory: pollcat / curl -o": t["idle_memory"]["median_ratio"],
        "one 1 GiB file, idle memory: pollcat / (curl -o; fsync)":
            t["idle_memory"]["median_ratio_to_curl_fsync"],
        "disk limit, dd conv=fdatasync MB/s": out["limits"]["dd_fdatasync_1GiB_MBps"],
        "2,000 x 256 KiB: curl time / pollcat time": m["files_in_one"]["ratio"],
        "2,000 x 256 KiB: (curl; sync) time / pollcat time":
            m["files_in_one"].get("ratio_to_curl_sync"),
        "1,000 ready downloads: pollcat s": m["ready_downloads"]["median_pollcat_s"],
        "1,000 ready downloads, 16 in parallel: pollcat s":
            m["ready_downloads"].get("median_extra_s"),
        "1,000 pending downloads, 60 s budget: sweep s": m["pending_downloads"]["sweep_s"],
        "prepared-zip / direct": out["zip"]["ratio"],
        "history: sweep with / without": out["history"]["ratio"],
        "peak RSS delivering 4 GiB, MB": out["rss_4GiB"]["pollcat_peak_rss_MB"],
    }


def commit() -> str:
    """The code measured: `git`'s short commit, `+changes` when the tree differs from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=True,
                              capture_output=True, text=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                 cwd=root, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if changed.strip() else "")


def keep_run(out: dict, folder: Path) -> Path:
    """One small file per full run (`bench/results/runs/`): one run on a shared machine says
    little, the report's table of every run says more."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (out["when"].replace(":", "").replace("+0000", "Z") + ".json")
    kept = {k: out[k] for k in ("when", "commit", "machine", "limits", "summary")}
    path.write_text(json.dumps(kept, indent=1) + "\n")
    return path


def main(scale: float = 1.0) -> None:
    settle_filesystem()
    out: dict = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
                 "commit": commit()}
    out["limits"] = limits.main()
    out["throughput_1GiB"] = throughput.main(int((1 << 30) * scale))
    out["many"] = many.main(scale)
    out["zip"] = zipsrc.main(max(8, int(64 * scale)))
    out["history"] = history.main(int(100_000 * scale))
    out["rss_4GiB"] = rss.main(int((4 << 30) * scale))
    out["sim_scale"] = sim_scale.main()
    out["summary"] = summary(out)
    path = Path(__file__).parent / "results" / ("latest.json" if scale == 1 else "small.json")
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps(out["summary"], indent=1))
    print(f"written {path}")
    if scale == 1:
        print(f"written {keep_run(out, path.parent / 'runs')}")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0)
