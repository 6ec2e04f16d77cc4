"""The simulated IDS driven by python-icat's own ``icat.ids.IDSClient``, unchanged.

If these pass, pollcat's IDS client code sees the same calls, results and exception classes it
would see against ids.server 2.1.1 (python-icat notes §1.4, §5).
"""

from __future__ import annotations

import io
import time
import zipfile
import zlib

import pytest
from icat.exception import (
    IDSBadRequestError,
    IDSDataNotOnlineError,
    IDSInsufficientPrivilegesError,
    IDSInternalError,
    IDSNotFoundError,
    IDSNotImplementedError,
)
from icat.ids import DataSelection, IDSClient

from tests.conftest import scenario

FAST = {"latency_s": 0.2, "bytes_per_s": 1_000_000_000}


def ds_id(sim, name: str) -> int:
    return next(d.id for d in sim.store.datasets.values() if d.name == name)


def df_of(sim, name: str):
    return next(d for d in sim.store.datafiles.values() if d.name == name)


def wait_prepared(client: IDSClient, pid: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not client.isPrepared(pid):
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.fixture
def sim(make_sim):
    return make_sim(scenario(restore=FAST))


@pytest.fixture
def client(sim) -> IDSClient:
    return IDSClient(sim.url + "/ids", sessionId=sim.facility.sessions.login("simple/alice"))


def test_version_ping_and_flags(sim, client):
    assert str(client.apiversion) == "2.1.1"
    assert client.version() == {"version": "2.1.1"}
    client.ping()
    assert client.isTwoLevel() is True
    assert client.isReadOnly() is False
    assert client.getIcatUrl() == sim.url


def test_prepare_restore_and_download(sim, client):
    run42 = ds_id(sim, "run-42")
    sel = DataSelection({"datasetIds": [run42]})
    pid = client.prepareData(sel, compressFlag=False, zipFlag=True)
    assert client.isPrepared(pid) is False
    assert client.getStatus(pid) in ("RESTORING", "ARCHIVED")
    wait_prepared(client, pid)
    assert client.getStatus(pid) == "ONLINE"
    assert client.getSize(pid) == 1048576 + 17 + 5
    assert client.getDatafileIds(pid) == sorted(sim.store.datasets[run42].datafile_ids)

    resp = client.getData(pid, outname="mydata")
    assert resp.status == 200
    assert resp.headers["Content-Disposition"] == 'attachment; filename="mydata.zip"'
    whole = resp.read()
    z = zipfile.ZipFile(io.BytesIO(whole))
    scan = df_of(sim, "scan_0001.nxs")
    assert z.getinfo("ids/LILS/INV-001/1/run-42/scan_0001.nxs").CRC == int(scan.checksum, 16)
    assert z.read("ids/LILS/INV-001/1/run-42/notes/readme.txt") == b"hello"

    resp = client.getData(pid, offset=1000)
    assert resp.status == 206
    assert resp.headers.get("Content-Range") is None
    tail = resp.read()
    assert len(tail) == len(whole) - 1000


def test_direct_forms(sim, client):
    scan = df_of(sim, "scan_0001.nxs")
    sel = DataSelection({"datafileIds": [scan.id]})
    with pytest.raises(IDSDataNotOnlineError) as exc:
        client.getData(sel)
    assert exc.value.status == 503
    deadline = time.monotonic() + 10
    while client.getStatus(sel) != "ONLINE":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    resp = client.getData(sel, offset=17)
    assert resp.status == 206
    body = resp.read()
    assert zlib.crc32(body) == zlib.crc32(b"".join(scan.iter_bytes(17)))
    assert client.getSize(sel) == scan.size
    assert client.getDatafileIds(sel) == [scan.id]
    client.archive(sel)
    assert client.getStatus(sel) == "ARCHIVED"
    client.restore(sel)
    client.reset(sel)


def test_error_classes(sim, client):
    bad = IDSClient(sim.url + "/ids", sessionId="not-a-uuid")
    with pytest.raises(IDSBadRequestError):
        bad.getSize(DataSelection({"datasetIds": [ds_id(sim, "run-42")]}))
    calib = DataSelection({"datasetIds": [ds_id(sim, "calib")]})
    with pytest.raises(IDSInsufficientPrivilegesError):
        client.getDatafileIds(calib)
    with pytest.raises(IDSNotFoundError):  # getSize's single-id fast path turns it into 404
        client.getSize(calib)
    with pytest.raises(IDSInsufficientPrivilegesError):
        client.getServiceStatus()
    with pytest.raises(IDSNotFoundError) as exc:
        client.isPrepared("0d9a3706-80d4-4d29-9ff3-4d65d4308a24")
    assert exc.value.message == ("The preparedId 0d9a3706-80d4-4d29-9ff3-4d65d4308a24 "
                                 "is not known")
    with pytest.raises(IDSNotImplementedError):
        client.delete(DataSelection({"datasetIds": [ds_id(sim, "run-42")]}))

    sim.add_fault(kind="fail_restore")
    pid = client.prepareData(DataSelection({"datasetIds": [ds_id(sim, "run-43")]}))
    deadline = time.monotonic() + 10
    with pytest.raises(IDSInternalError) as exc:
        while time.monotonic() < deadline:
            client.isPrepared(pid)
            time.sleep(0.05)
    assert exc.value.message == "Restore failed"
    client.reset(pid)
    wait_prepared(client, pid)


def test_admin_service_status(sim):
    admin = IDSClient(sim.url + "/ids", sessionId=sim.facility.sessions.login("simple/pollcat"))
    status = admin.getServiceStatus()
    assert status == {"opsQueue": [], "lockCount": 0, "locks": [], "failures": []}


def test_single_level_not_implemented(make_sim):
    sim = make_sim(scenario(storage="single-level"))
    client = IDSClient(sim.url + "/ids", sessionId=sim.facility.sessions.login("simple/alice"))
    sel = DataSelection({"datasetIds": [ds_id(sim, "run-42")]})
    assert client.isTwoLevel() is False
    with pytest.raises(IDSNotImplementedError):
        client.archive(sel)
    pid = client.prepareData(sel)
    assert client.isPrepared(pid) is True
    assert client.getStatus(sel) == "ONLINE"
