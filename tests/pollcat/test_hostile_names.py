"""Hostile names end to end through the simulated facility: datafile, dataset, investigation and
visit names, TopCAT fileNames and ICAT user names that try to leave the root, break logs or
shells, or collide with pollcat's own temporary names.

One simulated facility holds one download per case and is swept until every download settled;
each case then checks its own download:

* `refused`: TopCAT shows EXPIRED, pollcat's reason names the download, and no datafile byte of
  that download is anywhere on the target;
* `delivered`: TopCAT shows COMPLETE and the expected path holds exactly ICAT's bytes.

For every case: no file holding a datafile's marker exists outside the target root (the whole
pytest temp tree is scanned), and no part file is left anywhere.

The source is main storage copied without hard links (`source=storage, hardlink=False`): the
bytes go through the same part-file writer as HTTP, and names that HTTP headers cannot carry
(a decomposed Unicode name in Content-Disposition) do not decide the outcome here.
"""

from __future__ import annotations

import os
import stat
import unicodedata
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from pollcat.state import StateStore
from simfacility.server import RunningFacility
from tests.conftest import scenario
from tests.support import (
    crc_hex,
    downloads,
    pipeline_for,
    statuses,
    sweep_until_complete,
    wait_for,
)

# every case against both ways of resolving a path below the root (openat2, the walk)
pytestmark = pytest.mark.usefixtures("path_resolution")

MARKER = "POLLCAT-MARKER"
LONG = "x" * 300
PATH_4K = "/".join(["d" * 250] * 16) + "/deep.dat"  # 4 KB path, every component legal


@dataclass(frozen=True)
class Case:
    id: str
    field: str  # datafile | dataset | investigation | visit | file_name | user
    value: str
    expect: str  # refused | delivered
    rel: str | None = None  # for delivered: path below <user>/<download>/


C = Case
CASES = [
    # datafile names
    C("df-dotdot", "datafile", "..", "refused"),
    C("df-dot", "datafile", ".", "refused"),
    C("df-slash", "datafile", "/", "refused"),
    C("df-absolute", "datafile", "/etc/pollcat-hostile", "refused"),
    C("df-escape", "datafile", "../../../pollcat-escape", "refused"),
    C("df-inner-dotdot", "datafile", "a/../../b", "refused"),
    C("df-double-slash", "datafile", "a//b", "refused"),
    C("df-trailing-slash", "datafile", "a/", "refused"),
    C("df-backslash", "datafile", "a\\b", "refused"),
    C("df-backslash-escape", "datafile", "..\\..\\x", "refused"),
    C("df-nul", "datafile", "a\x00b", "refused"),
    C("df-newline", "datafile", "a\nb", "refused"),
    C("df-cr", "datafile", "a\rb", "refused"),
    C("df-tab", "datafile", "a\tb", "refused"),
    C("df-escape-char", "datafile", "a\x1b[31mred", "refused"),
    C("df-del", "datafile", "a\x7f", "refused"),
    C("df-c1", "datafile", "a\x85b", "refused"),
    C("df-line-separator", "datafile", "a\u2028b", "refused"),
    C("df-4k-component", "datafile", "y" * 4096, "refused"),
    C("df-256-bytes", "datafile", "é" * 128, "refused"),
    C("df-4k-path", "datafile", PATH_4K, "delivered", f"I/1/ds/{PATH_4K}"),
    C("df-255-bytes", "datafile", "z" * 255, "delivered", "I/1/ds/" + "z" * 255),
    C("df-unicode-nfc", "datafile", unicodedata.normalize("NFC", "café.dat"), "delivered",
      "I/1/ds/" + unicodedata.normalize("NFC", "café.dat")),
    C("df-unicode-nfd", "datafile", unicodedata.normalize("NFD", "café.dat"), "delivered",
      "I/1/ds/" + unicodedata.normalize("NFD", "café.dat")),
    C("df-zero-width", "datafile", "a\u200bb.dat", "delivered", "I/1/ds/a\u200bb.dat"),
    C("df-rtl-override", "datafile", "evil\u202etxt.exe", "delivered",
      "I/1/ds/evil\u202etxt.exe"),
    C("df-part-like", "datafile", ".x.pollcat-part", "delivered", "I/1/ds/.x.pollcat-part"),
    C("df-part-of-ok", "datafile", ".ok.dat.pollcat-part", "delivered",
      "I/1/ds/.ok.dat.pollcat-part"),
    C("df-id-part", "datafile", "7.pollcat-part", "delivered", "I/1/ds/7.pollcat-part"),
    C("df-staging-name", "datafile", ".pollcat", "delivered", "I/1/ds/.pollcat"),
    C("df-in-staging-like", "datafile", ".pollcat/.pollcat-claim.0", "delivered",
      "I/1/ds/.pollcat/.pollcat-claim.0"),
    C("df-manifest-name", "datafile", "pollcat-manifest.json", "delivered",
      "I/1/ds/pollcat-manifest.json"),
    C("df-legacy-claim", "datafile", ".pollcat-claim", "delivered", "I/1/ds/.pollcat-claim"),
    C("df-shell", "datafile", "$(touch pwned);`id`|x&.dat", "delivered",
      "I/1/ds/$(touch pwned);`id`|x&.dat"),
    C("df-leading-dash", "datafile", "-rf", "delivered", "I/1/ds/-rf"),
    C("df-spaces", "datafile", " a b ", "delivered", "I/1/ds/ a b "),
    C("df-percent", "datafile", "100%25.dat", "delivered", "I/1/ds/100%25.dat"),
    C("df-subdirs", "datafile", "sub/dir/f.dat", "delivered", "I/1/ds/sub/dir/f.dat"),
    # dataset names (one path component: "/" and "%" are percent-encoded)
    C("ds-dotdot", "dataset", "..", "refused"),
    C("ds-dot", "dataset", ".", "refused"),
    C("ds-backslash", "dataset", "a\\b", "refused"),
    C("ds-nul", "dataset", "a\x00", "refused"),
    C("ds-newline", "dataset", "run\n42", "refused"),
    C("ds-long", "dataset", LONG, "refused"),
    C("ds-slash", "dataset", "a/b", "delivered", "I/1/a%2Fb/f.dat"),
    C("ds-slash-dotdot", "dataset", "../..", "delivered", "I/1/..%2F../f.dat"),
    C("ds-absolute", "dataset", "/etc", "delivered", "I/1/%2Fetc/f.dat"),
    C("ds-percent", "dataset", "%2F", "delivered", "I/1/%252F/f.dat"),
    C("ds-staging-name", "dataset", ".pollcat", "delivered", "I/1/.pollcat/f.dat"),
    # investigation names (the first level below the download directory)
    C("inv-dotdot", "investigation", "..", "refused"),
    C("inv-dot", "investigation", ".", "refused"),
    C("inv-control", "investigation", "INV\x07", "refused"),
    C("inv-long", "investigation", LONG, "refused"),
    C("inv-staging-name", "investigation", ".pollcat", "refused"),
    C("inv-manifest-name", "investigation", "pollcat-manifest.json", "refused"),
    C("inv-legacy-claim", "investigation", ".pollcat-claim", "refused"),
    C("inv-slash", "investigation", "a/../b", "delivered", "a%2F..%2Fb/1/ds/f.dat"),
    C("inv-unicode", "investigation", "ÉTUDE", "delivered", "ÉTUDE/1/ds/f.dat"),
    # visit ids
    C("visit-dotdot", "visit", "..", "refused"),
    C("visit-dot", "visit", ".", "refused"),
    C("visit-nul", "visit", "1\x00", "refused"),
    C("visit-slash", "visit", "1/2", "delivered", "I/1%2F2/ds/f.dat"),
    C("visit-staging-name", "visit", ".pollcat", "delivered", "I/.pollcat/ds/f.dat"),
    # TopCAT fileNames (the download's own directory)
    C("fn-dotdot", "file_name", "..", "refused"),
    C("fn-dot", "file_name", ".", "refused"),
    C("fn-newline", "file_name", "my\ndownload", "refused"),
    C("fn-backslash", "file_name", "..\\evil", "refused"),
    C("fn-long", "file_name", LONG, "refused"),
    C("fn-escape", "file_name", "../../etc", "delivered", None),
    C("fn-absolute", "file_name", "/etc/cron.d", "delivered", None),
    C("fn-staging-name", "file_name", ".pollcat", "delivered", None),
    C("fn-shell", "file_name", "$(reboot)", "delivered", None),
    # ICAT user names (become a directory, maybe an SSH login)
    C("user-shell", "user", "simple/$(touch pwned)", "refused"),
    C("user-semicolon", "user", "simple/a;rm -rf", "refused"),
    C("user-dotdot", "user", "simple/..", "refused"),
    C("user-slashes", "user", "simple/../../etc", "refused"),
    C("user-upper", "user", "simple/Alice", "refused"),
    C("user-newline", "user", "simple/eve\n", "refused"),
    C("user-long", "user", "simple/" + "u" * 40, "refused"),
    C("user-root", "user", "simple/root", "refused"),
    C("user-daemon", "user", "simple/daemon", "refused"),
]


def _encoded(value: str) -> str:
    return value.replace("%", "%25").replace("/", "%2F")


def _scenario() -> dict:
    scn = scenario(downloads=[], investigations=[])
    scn["restore"] = {"latency_s": 0.05, "bytes_per_s": 1_000_000_000}
    users = {u["name"] for u in scn["users"]}
    for i, case in enumerate(CASES):
        user = case.value if case.field == "user" else "simple/alice"
        if user not in users:
            scn["users"].append({"name": user, "password": "pw"})
            users.add(user)
        inv = case.value if case.field == "investigation" else f"I-{i}"
        df = {"name": case.value if case.field == "datafile" else "f.dat",
              "content": f"{MARKER} {case.id}\n"}
        dfs = [df]
        if case.id == "df-part-of-ok":  # the swap of the issue: a name equal to a part name
            dfs.append({"name": "ok.dat", "content": f"{MARKER} ok " + "o" * 20000})
        scn["investigations"].append({
            "name": inv, "visit_id": case.value if case.field == "visit" else "1",
            "users": [user], "datasets": [
                {"name": case.value if case.field == "dataset" else "ds", "datafiles": dfs}]})
        scn["downloads"].append({
            "user": user, "transport": "globus", "email": "x@example.org",
            "file_name": case.value if case.field == "file_name" else f"dl-{i}",
            "items": [{"investigation": inv}]})
    return scn


@dataclass
class Swept:
    sim: RunningFacility
    root: Path
    state: Path
    base: Path
    by_case: dict[str, int]
    statuses: dict[int, str]


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Swept:
    base = tmp_path_factory.mktemp("hostile-names")
    sim = RunningFacility(_scenario(), base / "sim-data").start()
    try:
        pipe = pipeline_for(sim, base, source="storage", hardlink=False,
                            storage_url=f"file://{sim.facility.data_dir}")
        wait_for(lambda: len(statuses(sim.url)) == len(CASES), 120,
                 "all downloads submitted")
        rows = downloads(sim.url)
        order = sorted(rows)  # submitted in case order
        by_case = {case.id: order[i] for i, case in enumerate(CASES)}
        for _ in range(12):
            # readiness, not speed: TopCAT's StatusCheck prepares the 80-odd downloads one by
            # one, which took over 20 s on a CI host busy with two Prefect stacks
            wait_for(lambda: "PREPARING" not in statuses(sim.url).values(), 180, "prepared")
            pipe.sweep()
            if "RESTORING" not in statuses(sim.url).values():
                break
        yield Swept(sim, base / "target" / "globus", base / "state", base, by_case,
                    statuses(sim.url))
    finally:
        sim.stop()


def test_at_least_sixty_hostile_cases():
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)


@dataclass(frozen=True)
class Found:
    rel: str  # relative to the test's base directory
    size: int
    crc32: int


def _files_with_marker(base: Path, case_id: str) -> list[Found]:
    """Every regular file under `base` that starts with the case's marker.

    Walks with directory descriptors (`os.fwalk`): the 4 KB-path case is longer than PATH_MAX,
    which pollcat's fd-based writer handles and a path-based scan cannot.
    """
    needle = f"{MARKER} {case_id}\n".encode()
    found = []
    for dirpath, _dirs, names, dir_fd in os.fwalk(base):
        for name in names:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or st.st_size > 1 << 20:
                continue
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
            with os.fdopen(fd, "rb") as f:
                data = f.read()
            if data.startswith(needle):
                rel = os.path.relpath(os.path.join(dirpath, name), base)
                found.append(Found(rel, len(data), zlib.crc32(data)))
    return found


def _expected_rel(case: Case) -> str:
    i = CASES.index(case)
    download = _encoded(case.value) if case.field == "file_name" else f"dl-{i}"
    below = case.rel if case.rel is not None else "I/1/ds/f.dat"
    if below.startswith("I/"):
        below = f"I-{i}/" + below[2:]
    return f"target/globus/alice/{download}/{below}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_name(swept, case):
    download_id = swept.by_case[case.id]
    status = swept.statuses[download_id]
    copies = [f for f in _files_with_marker(swept.base, case.id)
              if not f.rel.startswith("sim-data/")]
    outside = [f.rel for f in copies if not f.rel.startswith("target/globus/")]
    assert outside == [], f"bytes outside the root: {outside}"
    assert not [name for d, _s, names, _fd in os.fwalk(swept.root) for name in names
                if name.endswith(".pollcat-part") and os.path.basename(d) == ".pollcat"]
    assert not Path("/etc/pollcat-hostile").exists() and not Path("/pollcat-escape").exists()
    record = StateStore(swept.state, "LILS").get(download_id)
    if case.expect == "refused":
        assert status == "EXPIRED", (case, status, record)
        assert record.reason.startswith(f"download {download_id}"), record
        assert copies == [], copies
        return
    assert status == "COMPLETE", (case, status, record)
    df = next(d for d in swept.sim.store.datafiles.values()
              if d.content and d.content.decode().startswith(f"{MARKER} {case.id}\n"))
    assert copies == [Found(_expected_rel(case), df.size, int(df.checksum, 16))]
    if case.id == "df-part-of-ok":  # the 20 kB file and the part-named one both intact
        ok = swept.base / _expected_rel(case).rsplit("/", 1)[0] / "ok.dat"
        ok_df = next(d for d in swept.sim.store.datafiles.values() if d.name == "ok.dat")
        assert ok.stat().st_size == ok_df.size
        assert int(crc_hex(ok), 16) == int(ok_df.checksum, 16)


def test_part_named_datafile_does_not_swap_20_mb_for_13_bytes(make_sim, tmp_path):
    """The issue's reproduction, over the IDS (direct source): `x.raw` (20 MB) and
    `.x.raw.pollcat-part` (13 bytes) in one dataset both arrive intact; COMPLETE once."""
    scn = scenario(downloads=[{"user": "simple/alice", "transport": "globus",
                               "file_name": "swap", "email": "alice@example.org",
                               "items": [{"investigation": "INV-001", "dataset": "swap"}]}])
    scn["investigations"][0]["datasets"].append({"name": "swap", "datafiles": [
        {"name": "x.raw", "size": 20_000_000},
        {"name": ".x.raw.pollcat-part", "content": "thirteen byte"}]})
    sim = make_sim(scn)
    pipe = pipeline_for(sim, tmp_path)
    sweep_until_complete(pipe, sim.url)
    ds = tmp_path / "target/globus/alice/swap/INV-001/1/swap"
    for name in ("x.raw", ".x.raw.pollcat-part"):
        df = next(d for d in sim.store.datafiles.values() if d.name == name)
        assert (ds / name).stat().st_size == df.size
        assert int(crc_hex(ds / name), 16) == int(df.checksum, 16)
    assert sorted(p.name for p in ds.iterdir()) == [".x.raw.pollcat-part", "x.raw"]
    assert not list((tmp_path / "target/globus/alice/swap/.pollcat").glob("*.pollcat-part"))
