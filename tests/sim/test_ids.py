"""The simulated IDS at the HTTP level: shapes, codes and bytes from wire reference §1."""

from __future__ import annotations

import io
import re
import time
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from simfacility.ids_api import java_hash_order, parse_ids
from simfacility.zipstream_writer import java_url_encode
from tests.conftest import scenario

FAST = {"latency_s": 0.2, "bytes_per_s": 1_000_000_000}
CORS = {"access-control-allow-origin": "*",
        "access-control-allow-methods": "GET, POST, DELETE, PUT",
        "access-control-allow-headers": "Content-Type"}


def ds_id(sim, name: str) -> int:
    return next(d.id for d in sim.store.datasets.values() if d.name == name)


def df_of(sim, name: str):
    return next(d for d in sim.store.datafiles.values() if d.name == name)


def inv_id(sim, name: str) -> int:
    return next(i.id for i in sim.store.investigations.values() if i.name == name)


def content(df) -> bytes:
    return b"".join(df.iter_bytes())


def err(r: requests.Response, status: int, code: str, message: str | None = None) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == code
    if message is not None:
        assert body["message"] == message


def wait_until(pred, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


@pytest.fixture
def sim(make_sim):
    return make_sim(scenario(restore=FAST))


@pytest.fixture
def single(make_sim):
    return make_sim(scenario(storage="single-level"))


def ids(sim) -> str:
    return sim.url + "/ids"


def prepare(sim, sid: str, **sel) -> str:
    r = requests.post(ids(sim) + "/prepareData", data={"sessionId": sid, **sel})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/plain"
    return r.text


def wait_prepared(sim, pid: str) -> None:
    wait_until(lambda: requests.get(ids(sim) + "/isPrepared",
                                    params={"preparedId": pid}).text == "true")


# -- informational calls, CORS, unknown paths ----------------------------------------------

def test_informational_calls(sim):
    u = ids(sim)
    r = requests.get(u + "/ping")
    assert (r.status_code, r.text, r.headers["content-type"]) == (200, "IdsOK", "text/plain")
    assert requests.get(u + "/version").json() == {"version": "2.1.1"}
    assert requests.get(u + "/isReadOnly").text == "false"
    assert requests.get(u + "/isTwoLevel").text == "true"
    assert requests.get(u + "/getIcatUrl").text == sim.url
    for k, v in CORS.items():
        assert r.headers[k] == v


def test_unknown_path_and_wrong_method(sim):
    r = requests.get(ids(sim) + "/getApiVersion")
    err(r, 501, "NOT_IMPLEMENTED", "Operation not implemented by this IDS server.")
    assert r.headers["access-control-allow-origin"] == "*"
    r = requests.get(ids(sim) + "/prepareData")
    err(r, 500, "InternalException",
        "class jakarta.ws.rs.NotAllowedException HTTP 405 Method Not Allowed")


def test_service_status_needs_root(sim):
    u = ids(sim) + "/getServiceStatus"
    alice = sim.facility.sessions.login("simple/alice")
    err(requests.get(u, params={"sessionId": alice}), 403, "InsufficientPrivilegesException",
        "simple/alice is not included in the ids rootUserNames set.")
    admin = sim.facility.sessions.login("simple/pollcat")
    prepare(sim, alice, datasetIds=str(ds_id(sim, "run-42")))
    body = requests.get(u, params={"sessionId": admin}).json()
    assert set(body) == {"opsQueue", "lockCount", "locks", "failures"}
    assert body["opsQueue"][0]["request"] == "RESTORE_REQUESTED"
    assert "(LILS/INV-001/1/run-42)" in body["opsQueue"][0]["data"]


# -- validation -----------------------------------------------------------------------------

def test_uuid_validation_messages(sim):
    u = ids(sim)
    err(requests.get(u + "/getData", params={"sessionId": "ABC"}), 400, "BadRequestException",
        "The sessionId parameter 'ABC' is not a valid UUID")
    err(requests.get(u + "/isPrepared"), 400, "BadRequestException",
        "The preparedId parameter 'null' is not a valid UUID")
    upper = "0D9A3706-80D4-4D29-9FF3-4D65D4308A24"
    err(requests.get(u + "/getStatus", params={"preparedId": upper}), 400,
        "BadRequestException", f"The preparedId parameter '{upper}' is not a valid UUID")


def test_selection_validation_messages(sim):
    sid = sim.facility.sessions.login("simple/alice")
    u = ids(sim) + "/getSize"
    for param, value in [("datasetIds", ""), ("datafileIds", "1,x"), ("investigationIds", " 3")]:
        err(requests.get(u, params={"sessionId": sid, param: value}), 400, "BadRequestException",
            f"The {param} parameter '{value}' is not a valid string representation of a comma "
            "separated list of longs")
    ds42, ds43 = ds_id(sim, "run-42"), ds_id(sim, "run-43")
    r = requests.get(u, params={"sessionId": sid, "datasetIds": f"{ds42} , {ds43},"})
    assert r.text == str(1048576 + 17 + 5 + 4096)


def test_parse_ids_follows_java_split():
    assert parse_ids("x", None) == []
    assert parse_ids("x", "1, 2 ,3,") == [1, 2, 3]
    assert parse_ids("x", ",") == []
    assert parse_ids("x", "+4,-5") == [4, -5]


def test_access_errors(sim):
    u = ids(sim) + "/getDatafileIds"
    alice = sim.facility.sessions.login("simple/alice")
    bob = sim.facility.sessions.login("simple/bob")
    ds = ds_id(sim, "run-42")
    unknown = "0d9a3706-80d4-4d29-9ff3-4d65d4308a24"
    r = requests.get(u, params={"sessionId": unknown, "datasetIds": ds})
    err(r, 403, "InsufficientPrivilegesException",
        f"Unable to find user by sessionid: {unknown}")
    err(requests.get(u, params={"sessionId": bob, "datasetIds": ds}), 403,
        "InsufficientPrivilegesException", "READ access to this Dataset is not allowed.")
    err(requests.get(u, params={"sessionId": alice, "datasetIds": 999999}), 404,
        "NotFoundException", "Dataset[id:999999] not found.")
    err(requests.get(u, params={"sessionId": alice, "investigationIds": inv_id(sim, "INV-002")}),
        403, "InsufficientPrivilegesException")
    sim.facility.sessions.expire(user_name="simple/alice")
    err(requests.get(u, params={"sessionId": alice, "datasetIds": ds}), 403,
        "InsufficientPrivilegesException")


# -- restore lifecycle ---------------------------------------------------------------------

def test_restore_lifecycle_503_then_data(make_sim):
    # a restore long enough that RESTORING is still seen after the 503 on a loaded CI host
    # (FAST's restore ended first once, with four xdist workers beside two Prefect stacks)
    sim = make_sim(scenario(restore={"latency_s": 3.0, "bytes_per_s": 1_000_000_000}))
    u = ids(sim)
    sid = sim.facility.sessions.login("simple/alice")
    df = df_of(sim, "scan_0002.nxs")
    sel = {"sessionId": sid, "datafileIds": df.id}
    assert requests.get(u + "/getStatus", params=sel).text == "ARCHIVED"
    r = requests.get(u + "/getData", params=sel)
    err(r, 503, "DataNotOnlineException",
        "Before putting, getting or deleting a datafile, its dataset has to be restored, "
        "restoration requested automatically")
    assert requests.get(u + "/getStatus", params=sel).text == "RESTORING"
    wait_until(lambda: requests.get(u + "/getStatus", params=sel).text == "ONLINE")
    r = requests.get(u + "/getData", params=sel)
    assert r.status_code == 200 and r.content == content(df)
    assert sim.store.path_of(df).exists()
    # archiving takes it offline again and drops the file
    assert requests.post(u + "/archive", data=sel).status_code == 204
    assert requests.get(u + "/getStatus", params=sel).text == "ARCHIVED"
    wait_until(lambda: not sim.store.path_of(df).exists())
    assert requests.post(u + "/restore", data=sel).status_code == 204
    wait_until(lambda: requests.get(u + "/getStatus", params=sel).text == "ONLINE")


def test_restore_takes_the_configured_time(make_sim):
    sim = make_sim(scenario(restore={"latency_s": 0.5, "bytes_per_s": 1_000_000_000}))
    sid = sim.facility.sessions.login("simple/alice")
    t0 = time.monotonic()
    pid = prepare(sim, sid, datasetIds=str(ds_id(sim, "run-42")))
    assert requests.get(ids(sim) + "/isPrepared", params={"preparedId": pid}).text == "false"
    wait_prepared(sim, pid)
    assert 0.5 <= time.monotonic() - t0 < 3.0


def test_datafile_storage_unit_message(make_sim):
    sim = make_sim(scenario(restore=FAST, storage_unit="datafile"))
    sid = sim.facility.sessions.login("simple/alice")
    scan, readme = df_of(sim, "scan_0001.nxs"), df_of(sim, "notes/readme.txt")
    r = requests.get(ids(sim) + "/getData", params={"sessionId": sid, "datafileIds": scan.id})
    err(r, 503, "DataNotOnlineException",
        "Before getting a datafile, it must be restored, restoration requested automatically")
    sel = {"sessionId": sid, "datafileIds": readme.id}
    assert requests.get(ids(sim) + "/getStatus", params=sel).text == "ARCHIVED"


def test_restore_failure_until_reset(sim):
    u = ids(sim)
    sid = sim.facility.sessions.login("simple/alice")
    sim.add_fault(kind="fail_restore", dataset_ids=[ds_id(sim, "run-42")])
    pid = prepare(sim, sid, datasetIds=str(ds_id(sim, "run-42")))

    def failed() -> bool:
        return requests.get(u + "/isPrepared", params={"preparedId": pid}).status_code == 500

    wait_until(failed)
    err(requests.get(u + "/isPrepared", params={"preparedId": pid}), 500, "InternalException",
        "Restore failed")
    err(requests.get(u + "/getStatus", params={"preparedId": pid}), 500, "InternalException",
        "Restore failed")
    admin = sim.facility.sessions.login("simple/pollcat")
    status = requests.get(u + "/getServiceStatus", params={"sessionId": admin}).json()
    assert status["failures"] == [ds_id(sim, "run-42")]
    assert requests.post(u + "/reset", data={"preparedId": pid}).status_code == 204
    assert requests.get(u + "/getStatus", params={"preparedId": pid}).text == "ARCHIVED"
    wait_prepared(sim, pid)  # isPrepared re-queued the restore, which now succeeds


def test_prepare_data_clears_failure(sim):
    sid = sim.facility.sessions.login("simple/alice")
    sim.add_fault(kind="fail_restore")
    ds = str(ds_id(sim, "run-43"))
    pid = prepare(sim, sid, datasetIds=ds)
    wait_until(lambda: requests.get(ids(sim) + "/isPrepared",
                                    params={"preparedId": pid}).status_code == 500)
    pid2 = prepare(sim, sid, datasetIds=ds)
    wait_prepared(sim, pid2)
    assert requests.get(ids(sim) + "/isPrepared", params={"preparedId": pid}).text == "true"


# -- getData --------------------------------------------------------------------------------

def test_prepared_zip_entries_and_crcs(sim):
    sid = sim.facility.sessions.login("simple/alice")
    pid = prepare(sim, sid, datasetIds=str(ds_id(sim, "run-42")), compress="false")
    wait_prepared(sim, pid)
    r = requests.get(ids(sim) + "/getData", params={"preparedId": pid})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["accept-ranges"] == "bytes"
    assert "content-length" not in r.headers
    assert re.fullmatch(r'attachment; filename="\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d\.zip"',
                        r.headers["content-disposition"])
    z = zipfile.ZipFile(io.BytesIO(r.content))
    names = [i.filename for i in z.infolist()]
    assert names == ["ids/LILS/INV-001/1/run-42/scan_0001.nxs",
                     "ids/LILS/INV-001/1/run-42/notes/readme.txt"]
    for info in z.infolist():
        df = df_of(sim, info.filename.split("/", 5)[5])
        assert info.compress_type == zipfile.ZIP_DEFLATED
        assert info.CRC == zlib.crc32(content(df)) == int(df.checksum, 16)
        assert z.read(info) == content(df)
    assert z.read(names[1]) == b"hello"
    assert z.testzip() is None


def test_zip_entry_names_are_url_encoded(make_sim):
    scn = scenario(restore=FAST)
    scn["investigations"][0]["name"] = "INV 001~a/b&c*d.e-f_g"
    scn["investigations"][0]["visit_id"] = "v 1"
    scn["investigations"][0]["datasets"][0]["name"] = "run 42+ä"
    sim = make_sim(scn)
    sid = sim.facility.sessions.login("simple/alice")
    pid = prepare(sim, sid, datasetIds=str(ds_id(sim, "run 42+ä")))
    wait_prepared(sim, pid)
    z = zipfile.ZipFile(io.BytesIO(requests.get(ids(sim) + "/getData",
                                                params={"preparedId": pid}).content))
    assert z.namelist()[1] == ("ids/LILS/INV+001%7Ea%2Fb%26c*d.e-f_g/v+1/run+42%2B%C3%A4/"
                               "notes/readme.txt")
    assert java_url_encode("a~b c") == "a%7Eb+c"


def test_compress_true_deflates(single):
    sid = single.facility.sessions.login("simple/alice")
    params = {"sessionId": sid, "datafileIds": df_of(single, "scan_0002.nxs").id,
              "zip": "true", "compress": "true"}
    r = requests.get(ids(single) + "/getData", params=params)
    z = zipfile.ZipFile(io.BytesIO(r.content))
    info = z.infolist()[0]
    assert info.compress_type == zipfile.ZIP_DEFLATED
    assert z.read(info) == content(df_of(single, "scan_0002.nxs"))


def test_must_zip_rule_and_content_disposition(single):
    u = ids(single) + "/getData"
    sid = single.facility.sessions.login("simple/alice")
    scan, readme = df_of(single, "scan_0001.nxs"), df_of(single, "notes/readme.txt")
    r = requests.get(u, params={"sessionId": sid, "datafileIds": readme.id})
    assert r.content == b"hello" and r.headers["content-length"] == "5"
    assert r.headers["content-disposition"] == 'attachment; filename="notes/readme.txt"'
    r = requests.get(u, params={"sessionId": sid, "datafileIds": readme.id, "outname": "x.txt"})
    assert r.headers["content-disposition"] == 'attachment; filename="x.txt"'
    cases = [({"datafileIds": f"{scan.id},{readme.id}"}, None, None),
             ({"datafileIds": readme.id, "zip": "TRUE"}, "foo", "foo.zip"),
             ({"datasetIds": ds_id(single, "run-43")}, "foo.zip", "foo.zip"),
             ({"investigationIds": inv_id(single, "INV-001")}, "foo.ZIP", "foo.ZIP.zip"),
             ({}, "a.b", "a.b.zip")]
    for sel, outname, expected in cases:
        params = {"sessionId": sid, **sel, **({"outname": outname} if outname else {})}
        r = requests.get(u, params=params)
        assert r.status_code == 200
        assert "content-length" not in r.headers
        zipfile.ZipFile(io.BytesIO(r.content)).testzip()
        if expected:
            assert r.headers["content-disposition"] == f'attachment; filename="{expected}"'
    empty = requests.get(u, params={"sessionId": sid})
    assert zipfile.ZipFile(io.BytesIO(empty.content)).namelist() == []


def test_range_resume(single):
    u = ids(single) + "/getData"
    sid = single.facility.sessions.login("simple/alice")
    scan = df_of(single, "scan_0001.nxs")
    full = content(scan)
    params = {"sessionId": sid, "datafileIds": scan.id}
    r = requests.get(u, params=params, headers={"Range": "bytes=1000-"})
    assert r.status_code == 206 and "content-range" not in r.headers
    assert r.content == full[1000:]
    assert r.headers["content-length"] == str(len(full) - 1000)
    r = requests.get(u, params=params, headers={"Range": "bytes=0-"})
    assert r.status_code == 200 and r.content == full
    for bad in ["bytes=0-99", "bytes=1-2,5-", "items=3-", "bytes= 3-"]:
        err(requests.get(u, params=params, headers={"Range": bad}), 400, "BadRequestException",
            r"The range must match bytes=(\d+)-")
    r = requests.get(u, params=params, headers={"Range": f"bytes={len(full) + 10}-"})
    assert r.status_code == 206 and r.content == b""
    # prepared raw: no Content-Length even for a single file
    pid = prepare(single, sid, datafileIds=str(scan.id))
    r = requests.get(u, params={"preparedId": pid}, headers={"Range": "bytes=5-"})
    assert r.status_code == 206 and "content-length" not in r.headers
    assert r.content == full[5:]
    assert r.headers["content-disposition"] == 'attachment; filename="scan_0001.nxs"'


def test_zip_resume_within_same_second(single):
    sid = single.facility.sessions.login("simple/alice")
    pid = prepare(single, sid, datasetIds=str(ds_id(single, "run-42")))
    u = ids(single) + "/getData"
    for _ in range(3):  # entry times have 2 s resolution: retry if a boundary fell between
        full = requests.get(u, params={"preparedId": pid}).content
        tail = requests.get(u, params={"preparedId": pid}, headers={"Range": "bytes=4242-"})
        if full[4242:] == tail.content:
            break
    assert tail.status_code == 206 and full[4242:] == tail.content


def test_prepared_ids_size_and_eviction(make_sim):
    sim = make_sim(scenario(restore=FAST, prepared_count=2))
    u = ids(sim)
    sid = sim.facility.sessions.login("simple/alice")
    scan, readme = df_of(sim, "scan_0001.nxs"), df_of(sim, "notes/readme.txt")
    first = prepare(sim, sid, datafileIds=f"{readme.id},{scan.id}")
    body = requests.get(u + "/getDatafileIds", params={"preparedId": first}).json()
    assert body == {"zip": True, "compress": False, "ids": sorted([scan.id, readme.id])}
    assert requests.get(u + "/getSize", params={"preparedId": first}).text == str(1048576 + 22)
    prepare(sim, sid, datafileIds=str(scan.id))
    prepare(sim, sid, datafileIds=str(scan.id), zip="true")
    for ep in ["/isPrepared", "/getData", "/getStatus", "/getSize", "/getDatafileIds"]:
        err(requests.get(u + ep, params={"preparedId": first}), 404, "NotFoundException",
            f"The preparedId {first} is not known")
    err(requests.post(u + "/reset", data={"preparedId": first}), 404, "NotFoundException")


def test_direct_datafile_ids_and_size(single):
    sid = single.facility.sessions.login("simple/alice")
    u = ids(single)
    params = {"sessionId": sid, "investigationIds": inv_id(single, "INV-001")}
    got = requests.get(u + "/getDatafileIds", params=params).json()
    assert set(got) == {"ids"}
    assert sorted(got["ids"]) == sorted(d.id for d in single.store.datafiles.values()
                                        if d.name != "c.dat")
    assert requests.get(u + "/getSize", params=params).text == str(1048576 + 17 + 5 + 4096)
    assert java_hash_order([17, 1, 33, 2]) == [17, 1, 33, 2]  # bucket 1 keeps insertion order
    assert java_hash_order([20, 3, 18]) == [18, 3, 20]


def test_deleted_datafile_after_prepare(sim):
    sid = sim.facility.sessions.login("simple/alice")
    pid = prepare(sim, sid, datasetIds=str(ds_id(sim, "run-42")))
    wait_prepared(sim, pid)
    df_of(sim, "notes/readme.txt").deleted = True
    err(requests.get(ids(sim) + "/getData", params={"preparedId": pid}), 404,
        "NotFoundException", "One of the datafiles requested has been deleted")


def test_getdata_session_calls_need_valid_session_prepared_do_not(sim):
    sid = sim.facility.sessions.login("simple/alice")
    pid = prepare(sim, sid, datafileIds=str(df_of(sim, "notes/readme.txt").id))
    sim.facility.sessions.logout(sid)
    wait_prepared(sim, pid)
    r = requests.get(ids(sim) + "/getData", params={"preparedId": pid})
    assert r.content == b"hello"


def test_concurrent_streams(single):
    sid = single.facility.sessions.login("simple/alice")
    scan = df_of(single, "scan_0001.nxs")
    expected = zlib.crc32(content(scan))

    def fetch(i: int) -> int:
        params = {"sessionId": sid, "datafileIds": scan.id, "zip": "true" if i % 2 else "false"}
        r = requests.get(ids(single) + "/getData", params=params)
        if i % 2:
            return zipfile.ZipFile(io.BytesIO(r.content)).infolist()[0].CRC
        return zlib.crc32(r.content)

    with ThreadPoolExecutor(100) as pool:
        assert set(pool.map(fetch, range(100))) == {expected}


# -- storage operations and configuration ---------------------------------------------------

def test_single_level_operations(single):
    u = ids(single)
    sid = single.facility.sessions.login("simple/alice")
    sel = {"sessionId": sid, "datasetIds": ds_id(single, "run-42")}
    assert requests.get(u + "/isTwoLevel").text == "false"
    for op in ["archive", "restore", "write"]:
        err(requests.post(u + "/" + op, data=sel), 501, "NotImplementedException",
            "This operation is unavailable for single level storage")
    assert requests.get(u + "/getStatus", params=sel).text == "ONLINE"
    pid = prepare(single, sid, datasetIds=str(ds_id(single, "run-42")))
    assert requests.get(u + "/isPrepared", params={"preparedId": pid}).text == "true"
    assert requests.post(u + "/reset", data=sel).status_code == 204


def test_read_only_write_put_delete(make_sim):
    sim = make_sim(scenario(restore=FAST, ids={"read_only": True}))
    u = ids(sim)
    sid = sim.facility.sessions.login("simple/alice")
    sel = {"sessionId": sid, "datasetIds": ds_id(sim, "run-42")}
    assert requests.get(u + "/isReadOnly").text == "true"
    msg = "This operation has been configured to be unavailable"
    err(requests.post(u + "/write", data=sel), 501, "NotImplementedException", msg)
    err(requests.delete(u + "/delete", params=sel), 501, "NotImplementedException", msg)
    err(requests.put(u + "/put", params=sel, data=b"x"), 501, "NotImplementedException", msg)


def test_write_needs_online_data(sim):
    sid = sim.facility.sessions.login("simple/alice")
    sel = {"sessionId": sid, "datasetIds": ds_id(sim, "run-43")}
    err(requests.post(ids(sim) + "/write", data=sel), 503, "DataNotOnlineException")
    wait_until(lambda: requests.get(ids(sim) + "/getStatus", params=sel).text == "ONLINE")
    assert requests.post(ids(sim) + "/write", data=sel).status_code == 204


# -- faults on the data stream are observable -------------------------------------------

def test_truncate_and_reset_faults(single):
    sid = single.facility.sessions.login("simple/alice")
    scan = df_of(single, "scan_0001.nxs")
    params = {"sessionId": sid, "datafileIds": scan.id, "zip": "true"}
    single.add_fault(kind="truncate", service="ids", endpoint="getData", after_bytes=1000,
                     count=1)
    r = requests.get(ids(single) + "/getData", params=params)
    assert r.status_code == 200 and len(r.content) == 1000
    single.add_fault(kind="reset", service="ids", endpoint="getData", after_bytes=5000, count=1)
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(ids(single) + "/getData", params=params).content  # noqa: B018
    r = requests.get(ids(single) + "/getData", params=params)
    assert zipfile.ZipFile(io.BytesIO(r.content)).read(
        zipfile.ZipFile(io.BytesIO(r.content)).namelist()[0]) == content(scan)


def test_forget_prepared_fault(sim):
    sid = sim.facility.sessions.login("simple/alice")
    pid = prepare(sim, sid, datasetIds=str(ds_id(sim, "run-42")))
    assert sim.add_fault(kind="forget_prepared", prepared_id=pid)["result"] == 1
    err(requests.get(ids(sim) + "/isPrepared", params={"preparedId": pid}), 404,
        "NotFoundException")


def test_large_selection_is_fast(make_sim):
    scn = scenario(restore=FAST)  # two-level: nothing is written to disk up front
    scn["investigations"][0]["datasets"].append(
        {"name": "many", "datafiles": [{"generate": 20000, "size": 10}]})
    sim = make_sim(scn)
    sid = sim.facility.sessions.login("simple/alice")
    t0 = time.monotonic()
    pid = prepare(sim, sid, datasetIds=str(ds_id(sim, "many")))
    got = requests.get(ids(sim) + "/getDatafileIds", params={"preparedId": pid}).json()
    assert len(got["ids"]) == 20000
    assert requests.get(ids(sim) + "/getSize", params={"preparedId": pid}).text == "200000"
    assert requests.get(ids(sim) + "/isPrepared", params={"preparedId": pid}).text == "false"
    assert time.monotonic() - t0 < 3
