"""docs/benchmarks.md from bench/results/latest.json: ratios first, absolute figures as
context, the machine described. `python -m bench.report [results.json]`."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ANALYSIS = """
## What limits each figure (profiled during development, same machine)

- **One large file.** pollcat reads on one thread and writes 128 KiB slices on another
  (`pollcat/overlap.py`), starts the writeback of every 8 MiB window as it is written and waits
  for the window 8 back (`sync_file_range`: the disk has a queue of up to 72 MiB; waiting for
  the window just before wrote 1 GiB at 1.72–1.83 GB/s, this at 2.24–2.30 GB/s, one final
  fsync of it all at 1.58–1.61 GB/s), so the final fsync takes milliseconds; the CRC32
  that decides placement is still re-read from the part file just before the rename, with
  ISA-L's CRC32 (`isal`), which takes about 0.1 s for 1 GiB instead of 0.4 s. What is left is
  the kernel copying the bytes into the page cache (`copy_folio_from_iter_atomic`). On this
  virtual machine that copy depends on the memory it lands on: the balloon device reports
  memory free for 2 s to the host (`page_reporting_delay`), which drops its backing, and a
  write into it faults on the host. `dd bs=1M` wrote 1 GiB at 5.1–5.6 GB/s within 1.5 s of
  freeing that much and at 0.64–0.68 GB/s after 2 s, while `dd bs=256K` on idle memory still
  ran at 3.6–4.1 GB/s: large write calls land in large page-cache folios, which come from
  the blocks that were reported. A 1 GiB sweep on idle memory ran at 792–1,062 MB/s with
  256 KiB slices and 1,153–1,432 MB/s with 128 KiB (6 alternating rounds each; on memory just
  freed 1,284 and 1,315 MB/s medians), hence 128 KiB since 2026-12-01. The earlier runs
  below let `curl -o` start just after pollcat had freed its 1 GiB while pollcat started
  after seconds of set-up, so part of their spread (0.39–1.32 × `curl -o`) was the memory
  state; each writer now starts in the same one. pollcat's delivery is durable and `curl
  -o`'s is not; the early writeback keeps the fsync short, which is why pollcat can match a
  `curl -o` that skips it.
- **Memory for chunks.** glibc gives every allocation over 128 KiB its own mapping and returns
  it when freed, so each 1 MiB chunk cost 256 page faults and fresh zeroed pages: 140,000
  faults in a 512 MiB prepared-zip sweep. `pollcat.memory` raises glibc's mmap and trim
  thresholds once per process (32 MiB, 64 MiB) so chunks reuse freed heap: under 3,500
  faults, system time 0.71–0.76 s → 0.37–0.45 s, that sweep 1.04 s → 0.80 s, peak RSS of the
  process 103 → 130 MB.
- **Many files in one download.** The bytes are not the cost: pollcat spent about 1 ms of
  user CPU per file (2.1 s a round of 2,000; curl's 40 processes 0.45 s), about 45 % of it
  the getData request through python-icat, urllib3 and http.client (http.client's header
  parsing alone 11 %), most of the rest the no-follow target layer. The two cores are the
  limit: a round costs the simulator 2.5–3.6 CPU-s on its one thread, and the kernel (the
  page-cache copy, ext4 creating the files) 1.1–4 s for pollcat and 0.8–3.3 s for curl
  (`getrusage`), depending on the hour.
  Since 2026-12-01 a file costs 32 system calls (`strace`) instead of 43, plus about 9 that
  the final batch of fsyncs spent opening it again:
  the part writer's own descriptor is read back for the CRC32 and handed to a few sync
  threads that fsync it while the next files arrive (`targetfs/syncahead.py`, at most 64
  waiting), placement makes and enters the destination in one walk (`TargetFS.place`), and
  the getData opener keeps its host's urllib3 pool (the manager parsed every URL). Six
  alternating rounds in one process, old code against new: median 5.14 s against 3.87 s,
  user CPU 2.10 s against 1.46 s.
  Every system call hands the GIL to another of the transfer threads (a futex wake
  and wait each): an `lstat` per path component made 65 `stat` calls per file, so local
  targets now resolve each directory in one `openat2` (27 per file left, mostly `fstat` of
  opened files); each directory is listed once per delivery instead of trying to open every
  final and part name first (`transfer.FirstSight`), and the claim check before each
  placement is three `lstat`s in one directory walk (`TargetFS.lstat_all`) instead of a
  listing and a read (10–20 % of the CPU before).
  In the kernel, a fifth of pollcat's CPU is copying the bytes into the page cache
  (`copy_folio_from_iter_atomic`, `perf`), as for curl; on this VM that copy runs at 0.3 to
  8 GB/s depending on whether the guest's free memory is still backed by the host, so it
  decides which rounds are slow, for curl and pollcat alike. Per-file fsyncs in the workers
  are gone and getData connections are kept alive.
  The rounds keep what they wrote until the last one: `perf` showed a quarter of pollcat's
  CPU in ext4's inode allocator (`find_inode_bit`, `recently_deleted`), which skips, one by
  one, every inode deleted in the block group in the last 60 s (360 s while its table block
  is dirty). Deleting each round's 2,000 files before the next round cost about 0.5 ms of
  kernel time per file created (2,000 creates: 1.0–1.5 s, against 0.036 s in a group without
  recent deletions), pollcat 0.9 s a round and curl 0.4 s (ratio 0.82 against 0.92 in the
  same comparison): a measure of the allocator, not of the transfer.
- **Ready downloads.** CPU-bound on both sides: each download makes about eight calls to the
  simulator (isPrepared, TopCAT get, getDatafileIds, an ICAT search, getData, TopCAT status,
  ...) where curl makes one. 300 ready downloads cost the simulator 1.7 s of CPU (5.6 ms a
  download) and pollcat 4.0 s (13 ms: the calls, and about ten files and directories made per
  download: ledger, claim, staging, manifest); `max_parallel_downloads` 16 is no faster than
  4. The simulator's share alone, 5.6 s for 1,000 downloads on its one Python thread, is more
  than twice curl's 1.5 s, so the issue's table's "ratio ≥ 0.5" cannot be reached against
  this simulator; "≤ 30 s" is.
- **Pending downloads.** One deadline per sweep (`Pipeline.sweep`, `check_concurrency` 8):
  the sweep ends within about a second of the budget whatever the number of downloads.
- **Prepared zip.** One stream, unzipped on the fly. pollcat's reader (`pollcat/unzip.py`)
  computes no CRC32: each entry's declared CRC32 is compared with the one read back from the
  part file for ICAT's checksum, so every byte is hashed once (stream-unzip, used before,
  hashed every byte again with no switch: 0.20 s of CPU per 512 MiB against 0.04 s for the
  inflate alone). The socket is read on the sweep's thread while the entry before is written
  on a staging thread (`pollcat/entryfeed.py`), and each written entry is verified and placed
  on a third while the next ones stream. The simulator writes the bytes IDS's
  `ZipOutputStream` writes without compression (level-0 deflate, data descriptors, ZIP64 where
  a field overflows): it emits the stored blocks itself and takes CRC32 from ISA-L, 0.13 s of
  CPU per 512 MiB where zlib's level-0 deflate took 0.27 s, so `curl` reads its zip at 1.7–1.9
  GB/s. Both sources are then CPU-bound on the two cores they share with the simulator: a zip
  sweep costs pollcat about 0.6 CPU-s and the simulator 0.36–0.40, a direct sweep the
  simulator 0.36–0.45 (`perf`, per-process CPU).
- **History.** TopCAT's `DOWNLOAD` table has no index but the primary key (`Download.java`
  declares none), so any question by status reads the whole history, in TopCAT's database as
  in the simulator (about 0.2 µs a row). The pipeline keeps a bound in the ledger
  (`Pipeline.discover`): TopCAT is asked for the transport's downloads above the highest id
  whose fate is settled (or PAUSED), an id range its primary key answers, and pages continue
  after the last id seen. Every `full_scan_minutes` (10) one sweep also asks for every
  RESTORING download, so an admin's resume of an old download waits at most that long.
"""

STATIC = """
## Not re-measured here

**SFTP target** (development measurement, `tests/pollcat/test_sftp.py` set-up): one 64 MiB
file, full pipeline, median of 5, with sshd, the simulator and pollcat on the same 2 cores:
SFTP (OpenSSH, chacha20-poly1305) ≈ 83 MB/s, with
`storage_options={"encryption_algs": ["aes128-gcm@openssh.com"]}` ≈ 113 MB/s; OpenSSH's own
`sftp put` reaches about 109 MB/s on this machine, so encryption is the limit.

**Prefect** (from `../shared/reference/prefect-notes.md`): a task costs about 5 ms and
30–70 KB, which is why pollcat runs one task per download step, never one per file. A sweep
flow against a running server has about 1.3 s of fixed cost, not included above (the
benchmarks call `Pipeline.sweep` directly).
"""


def _ok(flag: bool) -> str:
    return "met" if flag else "**not met**"


def render(r: dict) -> str:
    lim, t, m = r["limits"], r["throughput_1GiB"], r["many"]
    f1, rd, pd = m["files_in_one"], m["ready_downloads"], m["pending_downloads"]
    z, h, rss, sim = r["zip"], r["history"], r["rss_4GiB"], r["sim_scale"]
    rows = [
        ("one 1 GiB file, whole sweep → local target",
         f"{t['median_pollcat_MBps']:,} MB/s", f"`curl -o` {t['median_curl_o_MBps']:,} MB/s",
         f"{t['median_ratio']}", "≥ 0.95", t["median_ratio"] >= 0.95),
        ("the same, against `curl -o` + `fsync` of the file (pollcat's durability)",
         f"{t['median_pollcat_MBps']:,} MB/s",
         f"`curl -o; fsync` {t.get('median_curl_o_fsync_MBps', '–')} MB/s",
         f"{t.get('median_ratio_to_curl_fsync', '–')}", "≥ 0.95",
         t.get("median_ratio_to_curl_fsync", 0) >= 0.95),
    ]
    idle = t.get("idle_memory")
    if idle:
        rows += [
            ("the same, each writer starting on idle memory (see below)",
             f"{statistics.median(idle['pollcat_MBps']):,} MB/s",
             f"`curl -o` {statistics.median(idle['curl_o_MBps']):,} MB/s",
             f"{idle['median_ratio']}", "≥ 0.95", idle["median_ratio"] >= 0.95),
            ("the same, idle memory, against `curl -o; fsync`",
             f"{statistics.median(idle['pollcat_MBps']):,} MB/s",
             f"`curl -o; fsync` {statistics.median(idle['curl_o_fsync_MBps']):,} MB/s",
             f"{idle['median_ratio_to_curl_fsync']}", "≥ 0.95",
             idle["median_ratio_to_curl_fsync"] >= 0.95)]
    rows += [
        (f"{f1['files']:,} × {f1['bytes_each'] >> 10} KiB in one download",
         f"{f1['median_pollcat_s']} s", f"`xargs -P8 curl`, 50 URLs per process: "
         f"{f1['median_curl_s']} s", f"{f1['ratio']}", "≥ 0.8", f1["ratio"] >= 0.8),
    ]
    if "curl_sync_s" in f1:
        rows += [
            ("the same, against curl followed by `sync` (pollcat's durability)",
             f"{f1['median_pollcat_s']} s",
             f"curl; `sync` {statistics.median(f1['curl_sync_s']):.2f} s",
             f"{f1['ratio_to_curl_sync']}", "≥ 0.8", f1["ratio_to_curl_sync"] >= 0.8)]
    rows += [
        (f"{rd['downloads']:,} ready one-file downloads ({rd['bytes_each'] >> 10} KiB each)",
         f"{rd['median_pollcat_s']} s", f"`xargs -P8 curl` of the same files "
         f"{rd['median_curl_s']} s", f"{rd['ratio']}", "≤ 30 s; ratio ≥ 0.5 (issue's table)",
         rd["median_pollcat_s"] <= 30 and rd["ratio"] >= 0.5),
        (f"{pd['downloads']:,} pending downloads, {pd['budget_s']:g} s poll budget",
         f"{pd['sweep_s']} s per sweep", "—", "—", f"≤ {pd['budget_s'] + 30:g} s",
         pd["sweep_s"] <= pd["budget_s"] + 30),
        (f"prepared-zip source, {z['files']} × {z['bytes_each'] >> 20} MiB",
         f"{z['prepared_zip_MBps']} MB/s", f"direct source {z['direct_MBps']} MB/s",
         f"{z['ratio']}", "≥ 0.9", z["ratio"] >= 0.9),
        (f"sweep with {h['history']['history']:,} COMPLETE downloads in TopCAT (single-level),"
         " the pipeline's own sweep", f"{h['history']['sweep_s']} s",
         f"with none {h['none']['sweep_s']} s", f"{h['ratio']}", "≤ 2", h["ratio"] <= 2),
        (f"peak RSS delivering {rss['bytes'] >> 30} GiB", f"{rss['pollcat_peak_rss_MB']} MB",
         f"curl {rss['curl_peak_rss_MB']} MB", "—", "≤ 300 MB",
         rss["pollcat_peak_rss_MB"] <= 300),
    ]
    out = [
        "# Benchmarks", "",
        f"Generated by `python -m bench.report` from `make bench` (`bench/run.py`, raw JSON in "
        f"`bench/results/latest.json`), one run started {r['when']} on the project machine: "
        f"{r['machine']}, shared with other developers. The simulator runs as its own process "
        "(except for the history measure, see below). Wall-clock figures on this machine vary "
        "by a factor of two or more from run to run (the disk's `dd` speed alone has been seen "
        "between 0.4 and 1.5 GB/s within an hour), so only the ratios of one run count: each "
        "pair is measured in alternating rounds in the same run, medians reported. The run "
        "starts with a `sync` and a 61 s wait (`bench/common.py`, `settle_filesystem`): ext4 "
        "walks past every inode deleted in the last minute (six while its table block is dirty) "
        "to create a file: right after 20,000 files were deleted, curl's 2,000-file round took "
        "3.76 and 4.08 s, against 3.47 and 3.37 s once settled.", "",
        "This virtual machine's balloon device hands memory freed for 2 s back to the host "
        "(free page reporting), and writing into it again then faults on the host: `dd` wrote "
        "1 GiB into the page cache at 5.1–5.6 GB/s within 1.5 s of freeing that much, at "
        "0.64–0.68 GB/s from 2 s on. Each 1 GiB round therefore starts just after 1.1 GiB was "
        "written and deleted (memory just freed, as on a host without such a balloon), for "
        "curl as for pollcat, and a second set of rounds starts each writer after 3.5 s idle "
        "(`bench/common.py`). Runs before 2026-12-01 10:00 did neither: `curl -o` started "
        "just after pollcat's round had freed its 1 GiB, pollcat after seconds of set-up. Every "
        "round of the many-file measures ends with a `sync` (not timed; timed after curl as "
        "the durable peer's extra): curl leaves its bytes dirty, and the kernel wrote 1.9 GB "
        "of them during a later pollcat round in one run, doubling that round's kernel time.", "",
        "## Ratios (issue 8's goals)", "",
        "| measure | pollcat | peer | ratio | goal | |", "|---|---|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} | {e} | {_ok(ok)} |" for a, b, c, d, e, ok in rows]
    out += [
        "", "Ratios are pollcat's rate over the peer's (for times: the peer's time over "
        "pollcat's), so 1.0 is parity and above 1 is faster than the peer.", ""]
    out += every_run(_kept_runs())
    out += [
        "## The physical limits, same run", "",
        "| limit | figure |", "|---|---|",
        f"| disk: `dd bs=1M count=1024 conv=fdatasync`, memory just freed | "
        f"{lim['dd_fdatasync_1GiB_MBps']:,} MB/s |",
        f"| the same, idle memory | {lim.get('dd_fdatasync_idle_memory_MBps', '–')} MB/s |",
        f"| `zlib.crc32`, one core | {lim['zlib_crc32_MBps']:,} MB/s |",
        f"| pollcat's CRC32 (`{lim['pollcat_crc32']}`), one core | "
        f"{lim['pollcat_crc32_MBps']:,} MB/s |",
        f"| simulator: `curl -o /dev/null` of the 1 GiB getData (median of the rounds) | "
        f"{t['median_curl_dev_null_MBps']:,} MB/s |",
        f"| simulator: the prepared zip stream, `curl -o /dev/null` | "
        f"{z['curl_zip_stream_MBps']:,} MB/s |",
        f"| cores | {lim['cpus']} (simulator, curl or pollcat, and the page cache share them) |",
        "", "## Absolute figures", "",
        "**One 1 GiB file** (`bench/throughput.py`), single-level storage, direct source, "
        "a full `Pipeline.sweep` (discover, check, plan, claim, transfer, re-read CRC32, "
        "fsync, rename, manifest, COMPLETE), re-checked against ICAT's CRC32 afterwards:", "",
        "| round | `curl -o` MB/s | `curl -o; fsync` MB/s | pollcat MB/s | pollcat sweep s "
        "| `curl -o /dev/null` MB/s |", "|---|---|---|---|---|---|"]
    synced = t.get("curl_o_fsync_MBps", ["–"] * t["rounds"])
    for i in range(t["rounds"]):
        out.append(f"| {i + 1} | {t['curl_o_MBps'][i]} | {synced[i]} | {t['pollcat_MBps'][i]} "
                   f"| {t['pollcat_sweep_wall_s'][i]} | {t['curl_dev_null_MBps'][i]} |")
    if idle:
        out += ["", "The same after 3.5 s of idle memory before each writer:", "",
                "| round | `curl -o` MB/s | `curl -o; fsync` MB/s | pollcat MB/s |",
                "|---|---|---|---|"]
        out += [f"| {i + 1} | {c} | {f} | {p} |" for i, (c, f, p) in enumerate(zip(
            idle["curl_o_MBps"], idle["curl_o_fsync_MBps"], idle["pollcat_MBps"], strict=True))]
    out += [
        "", f"**Many files / downloads** (`bench/many.py`): one download of {f1['files']:,} "
        f"files, rounds curl {f1['curl_s']} s (with `sync` after: {f1.get('curl_sync_s', '–')} s) "
        f"vs pollcat {f1['pollcat_s']} s (concurrency 8); "
        f"{rd['downloads']:,} ready downloads, rounds curl {rd['curl_s']} s vs pollcat "
        f"{rd['pollcat_s']} s (simulator start-up {rd['sim_startup_s']} s, not counted), and "
        f"with `max_parallel_downloads: 16` instead of the default 4: {rd['extra_s']} s "
        f"(median {rd['median_extra_s']} s); "
        f"{pd['downloads']:,} pending downloads: one sweep {pd['sweep_s']} s with a "
        f"{pd['budget_s']:g} s budget, outcomes {pd['outcomes']}.", "",
        f"**Prepared zip** (`bench/zipsrc.py`): rounds direct {z['direct_s']} s, prepared-zip "
        f"{z['prepared_zip_s']} s. The simulator builds the zip on the fly in one stream "
        f"({z['curl_zip_stream_MBps']} MB/s to curl), while the direct source fetches 4 files "
        "in parallel.", "",
        f"**History** (`bench/history.py`{', run ' + h['when'] if 'when' in h else ''}): "
        "TopCAT's table is filled directly (100,000 "
        "submissions through the user API would take most of an hour), so this simulator runs "
        "in the benchmark's process. The first sweep after the history appeared paged through "
        f"it once ({h['history']['first_sweep_s']} s) and moved the ledger's bound to "
        f"{h['history']['bound']:,}; every later sweep asks for ids above it and gets no row. "
        f"Every {h['history'].get('full_scan_minutes', 10):g} minutes one sweep also asks for "
        f"every RESTORING download: {h['history']['restoring_query_s']} s more, TopCAT "
        f"scanning its table (with no history: {h['none']['restoring_query_s']} s). The "
        "unbounded COMPLETE query every sweep made before took "
        f"{h['history']['unbounded_query_s']} s for {h['history']['unbounded_rows']:,} rows "
        f"(a sweep {h['ratio_unbounded']} × slower than with no history).", "",
        f"**Peak RSS** (`bench/rss.py`): a sweep in a child process delivering one "
        f"{rss['bytes'] >> 30} GiB file peaked at {rss['pollcat_peak_rss_MB']} MB "
        f"(`curl -o`: {rss['curl_peak_rss_MB']} MB); the sweep took {rss['pollcat_sweep_s']} s. "
        "At most 8 chunks of 1 MiB wait between the reading and the writing thread.", "",
        "**The simulator** (`bench/sim_scale.py`): start-up with 100,000 datafiles and 1,000 "
        f"downloads {sim['startup_100k_files_1000_downloads_s']} s; `SELECT COUNT(df)` over "
        f"{sim['datafiles']:,} datafiles {sim['count_query_s']} s; `curl -o /dev/null` of one "
        f"1 GiB getData {sim['curl_1GiB_MBps']:,} MB/s; 100 concurrent getData streams "
        f"{sim['concurrent_100_streams_MBps']} MB/s aggregate.", ""]
    return "\n".join(out) + ANALYSIS + STATIC


#: (column, summary key, goal test) of the table of every kept run
RUN_COLUMNS = [
    ("1 GiB / `curl -o`", "one 1 GiB file: pollcat / curl -o", lambda v: v >= 0.95),
    ("1 GiB / `curl -o; fsync`", "one 1 GiB file: pollcat / (curl -o; fsync)",
     lambda v: v >= 0.95),
    ("1 GiB idle / `curl -o`", "one 1 GiB file, idle memory: pollcat / curl -o",
     lambda v: v >= 0.95),
    ("2,000 files", "2,000 x 256 KiB: curl time / pollcat time", lambda v: v >= 0.8),
    ("2,000 files / (curl; `sync`)", "2,000 x 256 KiB: (curl; sync) time / pollcat time",
     lambda v: v >= 0.8),
    ("zip / direct", "prepared-zip / direct", lambda v: v >= 0.9),
    ("1,000 ready, s", "1,000 ready downloads: pollcat s", lambda v: v <= 30),
    ("1,000 pending, s", "1,000 pending downloads, 60 s budget: sweep s", lambda v: v <= 90),
    ("history", "history: sweep with / without", lambda v: v <= 2),
    ("RSS, MB", "peak RSS delivering 4 GiB, MB", lambda v: v <= 300),
]


def _kept_runs() -> list[dict]:
    folder = ROOT / "bench" / "results" / "runs"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def every_run(runs: list[dict]) -> list[str]:
    """One row per kept full run (`bench/results/runs/`), and how often each goal was met:
    what one run on a shared machine cannot say."""
    if not runs:
        return []
    head = "| run (UTC) | code | `dd` MB/s | " + " | ".join(c for c, _, _ in RUN_COLUMNS) + " |"
    out = ["## Every kept run", "",
           "Each full `make bench` run keeps its summary in `bench/results/runs/`; the code is "
           "the commit measured. A figure that misses its goal is in italics; a measure added "
           "after a run shows – there, and the last row counts the runs that measured it.", "",
           head, "|" + "---|" * (len(RUN_COLUMNS) + 3)]
    met, measured = [0] * len(RUN_COLUMNS), [0] * len(RUN_COLUMNS)
    for run in runs:
        cells = []
        for i, (_, key, ok) in enumerate(RUN_COLUMNS):
            value = run["summary"].get(key)
            if value is None:
                cells.append("–")
                continue
            measured[i] += 1
            met[i] += bool(ok(value))
            cells.append(f"{value}" if ok(value) else f"*{value}*")
        when = run["when"][:16].replace("T", " ")
        out.append(f"| {when} | {run.get('commit', '?')} | "
                   f"{run['limits']['dd_fdatasync_1GiB_MBps']:,} | " + " | ".join(cells) + " |")
    out.append("| goal met | | | " + " | ".join(f"{n} of {m}" for n, m in zip(met, measured,
                                                                          strict=True)) + " |")
    return out + [""]


def main(path: str | None = None) -> None:
    src = Path(path) if path else ROOT / "bench" / "results" / "latest.json"
    (ROOT / "docs" / "benchmarks.md").write_text(render(json.loads(src.read_text())))
    print(f"written {ROOT / 'docs' / 'benchmarks.md'} from {src}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
