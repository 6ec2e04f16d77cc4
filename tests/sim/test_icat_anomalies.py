"""Datafiles whose ICAT record does not vouch for their bytes, and names HTTP headers mangle.

ICAT's `fileSize` may be 0 (never registered: `Datafile.fileSize` defaults to 0) or stale, and
the checksum may be missing or not a CRC32. The real IDS takes the direct getData
`Content-Length` from ICAT's fileSize, so a client that trusts the header gets a short or empty
file (sim-fidelity audit rows 3 and 4).
"""

from __future__ import annotations

import io
import zipfile
import zlib

import pytest
import requests

from simfacility.ids_api import grizzly_header
from simfacility.model import java_hex
from tests.conftest import scenario
from tests.sim.test_ids import df_of, ids, prepare, wait_prepared

REAL = 10_000
ANOMALIES = [
    {"name": "zero.dat", "size": REAL, "file_size": 0},
    {"name": "stale_small.dat", "size": REAL, "file_size": 4_000},
    {"name": "stale_big.dat", "size": REAL, "file_size": 15_000},
    {"name": "no_checksum.dat", "size": REAL, "checksum": None},
    {"name": "md5.dat", "size": REAL, "checksum": "md5:0cc175b9c0f1b6a831c399e269772661"},
    {"name": "данные.nxs", "content": "cyrillic"},
    {"name": "zażółć.dat", "content": "polish"},
    {"name": "café.dat", "content": "latin-1"},
]


@pytest.fixture
def sim(make_sim):
    return make_sim(scenario(
        storage="single-level",
        investigations=[{"name": "INV-A", "users": ["simple/alice"], "datasets": [
            {"name": "odd", "datafiles": ANOMALIES}]}]))


def icat_row(sim, sid: str, name: str) -> dict:
    r = requests.get(f"{sim.url}/icat/entityManager", timeout=10, params={
        "sessionId": sid, "query": f"SELECT df FROM Datafile df WHERE df.name = '{name}'"})
    (row,) = r.json()
    return row["Datafile"]


def direct(sim, sid: str, name: str, **headers: str) -> requests.Response:
    return requests.get(ids(sim) + "/getData", headers=headers, timeout=10, stream=True,
                        params={"sessionId": sid, "datafileIds": str(df_of(sim, name).id)})


def true_bytes(sim, name: str) -> bytes:
    return b"".join(df_of(sim, name).iter_bytes())


def test_icat_reports_the_registered_size_and_checksum(sim):
    alice = sim.facility.sessions.login("simple/alice")
    assert icat_row(sim, alice, "zero.dat")["fileSize"] == 0
    assert icat_row(sim, alice, "stale_small.dat")["fileSize"] == 4_000
    no_sum = icat_row(sim, alice, "no_checksum.dat")
    assert "checksum" not in no_sum and no_sum["fileSize"] == REAL
    assert icat_row(sim, alice, "md5.dat")["checksum"].startswith("md5:")
    ok = icat_row(sim, alice, "stale_big.dat")
    assert ok["checksum"] == java_hex(zlib.crc32(true_bytes(sim, "stale_big.dat")))
    # the dataset's fileSize adds up ICAT's numbers, not the disk's
    r = requests.get(f"{sim.url}/icat/entityManager", timeout=10, params={
        "sessionId": alice, "query": "SELECT ds.fileSize FROM Dataset ds WHERE ds.name = 'odd'"})
    assert r.json() == [0 + 4_000 + 15_000 + 2 * REAL + sum(
        len(a["content"].encode()) for a in ANOMALIES if "content" in a)]


def test_get_size_trusts_icat(sim):
    alice = sim.facility.sessions.login("simple/alice")
    for name, expected in (("zero.dat", 0), ("stale_small.dat", 4_000),
                           ("stale_big.dat", 15_000)):
        r = requests.get(ids(sim) + "/getSize", timeout=10,
                         params={"sessionId": alice, "datafileIds": str(df_of(sim, name).id)})
        assert r.text == str(expected)


def test_direct_get_data_content_length_is_icat_file_size(sim):
    alice = sim.facility.sessions.login("simple/alice")
    data = true_bytes(sim, "stale_small.dat")
    r = direct(sim, alice, "stale_small.dat")
    assert r.status_code == 200 and r.headers["Content-Length"] == "4000"
    assert r.content == data[:4_000]  # looks complete, is truncated
    r = direct(sim, alice, "stale_small.dat", Range="bytes=1000-")
    assert r.status_code == 206 and r.headers["Content-Length"] == "3000"
    assert r.content == data[1000:4_000]
    r = direct(sim, alice, "zero.dat")
    assert r.headers["Content-Length"] == "0" and r.content == b""


def test_direct_get_data_longer_promise_than_bytes_breaks_the_connection(sim):
    alice = sim.facility.sessions.login("simple/alice")
    r = direct(sim, alice, "stale_big.dat")
    assert r.headers["Content-Length"] == "15000"
    got = bytearray()
    with pytest.raises(requests.exceptions.RequestException):
        for chunk in r.iter_content(4096):
            got += chunk
    assert bytes(got) == true_bytes(sim, "stale_big.dat")[:len(got)]
    assert len(got) <= REAL


def test_prepared_zip_holds_the_true_bytes(sim):
    alice = sim.facility.sessions.login("simple/alice")
    ids_ = ",".join(str(df_of(sim, a["name"]).id) for a in ANOMALIES[:3])
    pid = prepare(sim, alice, datafileIds=ids_, zip="true")
    wait_prepared(sim, pid)
    r = requests.get(ids(sim) + "/getData", params={"preparedId": pid}, timeout=10)
    assert "Content-Length" not in r.headers or int(r.headers["Content-Length"]) == len(r.content)
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        for a in ANOMALIES[:3]:
            (entry,) = [n for n in zf.namelist() if n.endswith("/" + a["name"])]
            assert zf.read(entry) == true_bytes(sim, a["name"])


@pytest.mark.parametrize("name,shown", [
    ("данные.nxs", "      .nxs"), ("zażółć.dat", "za    .dat"), ("café.dat", "caf .dat")])
def test_non_latin1_names_are_served_with_a_blanked_header(sim, name, shown):
    alice = sim.facility.sessions.login("simple/alice")
    r = direct(sim, alice, name)
    assert r.status_code == 200
    assert r.headers["Content-Disposition"] == f'attachment; filename="{shown}"'
    assert r.content == true_bytes(sim, name)


def test_grizzly_header_keeps_printable_ascii_and_tab():
    assert grizzly_header('a\tb "c" ~') == 'a\tb "c" ~'
    assert grizzly_header("x\x7fy\x01z€") == "x y z "
