"""The benchmark report's table of every kept run: misses marked, goals counted."""

from __future__ import annotations

import json

import pytest

from bench import run
from bench.report import RUN_COLUMNS, every_run

pytestmark = pytest.mark.unit


def _run(when: str, ratio_many: float, ready_s: float) -> dict:
    summary = {key: 1.0 for _, key, _ in RUN_COLUMNS}
    summary["2,000 x 256 KiB: curl time / pollcat time"] = ratio_many
    summary["1,000 ready downloads: pollcat s"] = ready_s
    summary["1,000 pending downloads, 60 s budget: sweep s"] = 61.0
    summary["peak RSS delivering 4 GiB, MB"] = 76.0
    return {"when": when, "commit": "abc1234", "limits": {"dd_fdatasync_1GiB_MBps": 900.0},
            "summary": summary}


def test_every_run_marks_misses_and_counts_the_goals_met():
    lines = every_run([_run("2026-12-01T02:58:00+00:00", 0.83, 15.0),
                       _run("2026-12-01T06:17:00+00:00", 0.74, 31.0)])
    rows = [line for line in lines if line.startswith("| 2026")]
    assert len(rows) == 2
    assert "| 0.83 |" in rows[0] and "| *0.74* |" in rows[1] and "| *31.0* |" in rows[1]
    goals = next(line for line in lines if line.startswith("| goal met"))
    cells = [c.strip() for c in goals.strip("|").split("|")][3:]
    counts = dict(zip([c for c, _, _ in RUN_COLUMNS], cells, strict=True))
    assert counts["2,000 files"] == "1 of 2" and counts["1,000 ready, s"] == "1 of 2"
    assert counts["zip / direct"] == "2 of 2"


def test_a_measure_a_run_did_not_have_is_counted_over_the_runs_that_had_it():
    old = _run("2026-12-01T02:58:00+00:00", 0.83, 15.0)
    del old["summary"]["2,000 x 256 KiB: curl time / pollcat time"]
    lines = every_run([old, _run("2026-12-01T06:17:00+00:00", 0.74, 12.0)])
    goals = next(line for line in lines if line.startswith("| goal met"))
    counts = dict(zip([c for c, _, _ in RUN_COLUMNS],
                      [c.strip() for c in goals.strip("|").split("|")][3:], strict=True))
    assert counts["2,000 files"] == "0 of 1" and counts["zip / direct"] == "2 of 2"
    assert "| – |" in next(line for line in lines if line.startswith("| 2026-12-01 02:58"))


def test_no_kept_run_adds_no_section():
    assert every_run([]) == []


def test_a_full_run_keeps_its_summary_under_its_time(tmp_path):
    out = {**_run("2026-12-01T06:17:41+00:00", 0.9, 12.0), "machine": "x", "other": [1] * 9}
    path = run.keep_run(out, tmp_path / "runs")
    assert path.name == "2026-12-01T061741Z.json"
    kept = json.loads(path.read_text())
    assert set(kept) == {"when", "commit", "machine", "limits", "summary"}
    assert kept["summary"] == out["summary"]


def _latest() -> dict:
    from bench.report import ROOT

    return json.loads((ROOT / "bench" / "results" / "latest.json").read_text())


def test_idle_memory_rounds_get_their_own_goal_rows_and_table():
    from bench.report import render

    r = _latest()
    r["throughput_1GiB"]["idle_memory"] = {
        "curl_o_MBps": [1000.0, 900.0, 1100.0], "curl_o_fsync_MBps": [600.0, 500.0, 700.0],
        "pollcat_MBps": [800.0, 700.0, 900.0], "median_ratio": 0.8,
        "median_ratio_to_curl_fsync": 1.33}
    text = render(r)
    plain = next(line for line in text.splitlines()
                 if line.startswith("| the same, each writer starting on idle memory"))
    assert "| 800.0 MB/s | `curl -o` 1,000.0 MB/s | 0.8 | ≥ 0.95 | **not met** |" in plain
    durable = next(line for line in text.splitlines()
                   if line.startswith("| the same, idle memory, against"))
    assert durable.endswith("| 1.33 | ≥ 0.95 | met |")
    assert "| 2 | 900.0 | 500.0 | 700.0 |" in text


def test_a_run_from_before_the_idle_rounds_still_renders():
    from bench.report import render

    r = _latest()
    r["throughput_1GiB"].pop("idle_memory", None)
    assert "idle memory (see below)" not in render(r)


def test_many_files_against_a_durable_curl_gets_its_row():
    from bench.report import render

    r = _latest()
    f1 = r["many"]["files_in_one"]
    f1.update(median_pollcat_s=4.0, curl_sync_s=[3.5, 3.4, 3.6], ratio_to_curl_sync=0.88)
    row = next(line for line in render(r).splitlines()
               if line.startswith("| the same, against curl followed by `sync`"))
    assert row.endswith("| 4.0 s | curl; `sync` 3.50 s | 0.88 | ≥ 0.8 | met |")
