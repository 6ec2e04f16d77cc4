"""`IdsGateway`'s own error paths, against the simulator and against a server that answers HTML.

The conformance suite (tests/sim/test_ids_conformance.py) drives the simulator with python-icat's
unmodified client; these tests drive pollcat's gateway, which is what the pipeline uses (design
review §0 defect 1: its error paths raised AttributeError for lack of `apiversion`).
"""

from __future__ import annotations

import http.server
import threading
import time
import uuid
from collections.abc import Iterator
from http.client import RemoteDisconnected

import pytest
from icat.ids import IDSClient
from urllib3.exceptions import ProtocolError

from pollcat.errors import (
    NotReady,
    PermanentServiceError,
    PreparedIdUnknown,
    RestoreFailed,
    ResumeNotSupported,
    TransientServiceError,
)
from pollcat.ids import STALE_CONNECTION_RETRY, IdsGateway
from tests.conftest import scenario

FAST = {"latency_s": 0.2, "bytes_per_s": 1_000_000_000}
UNKNOWN = str(uuid.uuid4())


@pytest.fixture
def sim(make_sim):
    return make_sim(scenario(restore=FAST))


@pytest.fixture
def gateway(sim) -> IdsGateway:
    return IdsGateway(sim.url, timeout=5)


def prepared(sim, gateway: IdsGateway, name: str = "run-43") -> str:
    ds = next(d.id for d in sim.store.datasets.values() if d.name == name)
    session = sim.facility.sessions.login("simple/alice")
    pid = gateway.prepare(session, dataset_ids=[ds])
    deadline = time.monotonic() + 10
    while not gateway.is_prepared(pid):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return pid


def assert_names_ids(err: BaseException, *secrets: str) -> None:
    text = str(err)
    assert "IDS" in text
    for secret in secrets:
        assert secret not in text


def test_client_is_built_by_python_icats_constructor(gateway):
    client = gateway._base()
    assert isinstance(client, IDSClient)
    assert str(client.apiversion) == "2.1.1"  # set only by IDSClient.__init__
    assert gateway.version() == "2.1.1"


@pytest.mark.parametrize("call", ["is_prepared", "datafile_ids", "reset", "status"])
def test_unknown_prepared_id_is_prepared_id_unknown(gateway, call):
    with pytest.raises(PreparedIdUnknown) as info:
        getattr(gateway, call)(UNKNOWN)
    assert info.value.status == 404 and info.value.code == "NotFoundException"
    assert_names_ids(info.value, UNKNOWN)


def test_known_prepared_id_calls(sim, gateway):
    pid = prepared(sim, gateway)
    assert gateway.is_prepared(pid) is True
    assert gateway.status(pid) == "ONLINE"
    assert sorted(gateway.datafile_ids(pid)) == sorted(
        d.id for d in sim.store.datafiles.values() if d.name == "scan_0002.nxs")
    gateway.reset(pid)


def test_keep_alive_one_connection_for_many_calls(sim, gateway):
    for _ in range(5):
        with pytest.raises(PreparedIdUnknown):
            gateway.is_prepared(UNKNOWN)
    gateway.version()
    pool = gateway._opener._pool.connection_from_url(sim.url)
    assert pool.num_requests >= 6 and pool.num_connections == 1


@pytest.mark.parametrize("status, code, expected", [
    (500, "InternalException", TransientServiceError),
    (503, "DataNotOnlineException", NotReady),
    (403, "InsufficientPrivilegesException", PermanentServiceError),
    (400, "BadRequestException", PermanentServiceError),
])
@pytest.mark.parametrize("endpoint, call", [
    ("isPrepared", "is_prepared"), ("getDatafileIds", "datafile_ids"), ("reset", "reset"),
    ("getStatus", "status")])
def test_service_errors_by_class(sim, gateway, status, code, expected, endpoint, call):
    pid = prepared(sim, gateway)
    sim.add_fault(kind="error", service="ids", endpoint=endpoint, status=status, code=code,
                  message=f"refused {pid}")
    with pytest.raises(expected) as info:
        getattr(gateway, call)(pid)
    assert not isinstance(info.value, RestoreFailed | PreparedIdUnknown)
    assert info.value.status == status and info.value.code == code
    assert_names_ids(info.value, pid)


def test_restore_failed(sim, gateway):
    pid = prepared(sim, gateway)
    sim.add_fault(kind="error", service="ids", endpoint="isPrepared", status=500,
                  code="InternalException", message="Restore failed")
    with pytest.raises(RestoreFailed):
        gateway.is_prepared(pid)


def test_is_prepared_answer_neither_true_nor_false(sim, gateway):
    """A corrupted byte turns "true" into garbage: an error naming the IDS, never "not ready"."""
    pid = prepared(sim, gateway)
    sim.add_fault(kind="corrupt", service="ids", endpoint="isPrepared", after_bytes=0)
    with pytest.raises(TransientServiceError) as info:
        gateway.is_prepared(pid)
    assert "isPrepared" in str(info.value)
    assert_names_ids(info.value, pid)


def test_truncated_json_answer(sim, gateway):
    pid = prepared(sim, gateway)
    sim.add_fault(kind="truncate", service="ids", endpoint="getDatafileIds", after_bytes=5)
    with pytest.raises(TransientServiceError) as info:
        gateway.datafile_ids(pid)
    assert_names_ids(info.value, pid)


@pytest.mark.parametrize("known", [True, False])
def test_stall_is_a_timeout_not_a_hang(sim, known):
    """The body stalls after the headers, of a 200 answer or of a 404 error alike."""
    gateway = IdsGateway(sim.url, timeout=0.5)
    pid = prepared(sim, gateway) if known else UNKNOWN
    sim.add_fault(kind="stall", service="ids", endpoint="isPrepared", seconds=2)
    started = time.monotonic()
    with pytest.raises(TransientServiceError) as info:
        gateway.is_prepared(pid)
    assert time.monotonic() - started < 3
    assert_names_ids(info.value, pid)


def test_nothing_listening(sim):
    gateway = IdsGateway("http://127.0.0.1:9", timeout=2)
    session = sim.facility.sessions.login("simple/alice")
    with pytest.raises(TransientServiceError) as info:
        gateway.get_datafile(session, 1)
    assert "cannot reach the IDS" in str(info.value)
    assert_names_ids(info.value, session)


def test_get_data_errors_and_range(sim, gateway):
    prepared(sim, gateway, "run-42")  # restores run-42 to main storage
    session = sim.facility.sessions.login("simple/alice")
    df = next(d for d in sim.store.datafiles.values() if d.name == "c.dat")
    with pytest.raises(PermanentServiceError) as info:  # bob's file: alice may not read it
        gateway.get_datafile(session, df.id)
    assert info.value.status == 403
    assert_names_ids(info.value, session)
    mine = next(d for d in sim.store.datafiles.values() if d.name == "notes/readme.txt")
    sim.add_fault(kind="error", service="ids", endpoint="getData", status=503,
                  code="DataNotOnlineException", count=1)
    with pytest.raises(NotReady):
        gateway.get_datafile(session, mine.id)
    resp = gateway.get_datafile(session, mine.id, offset=2)
    assert resp.status == 206 and resp.read() == b"llo"
    resp.close()


# -- a server that is not an IDS (a proxy's pages, broken answers) -----------------------------

class _Scripted(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    answers: dict[str, tuple[int, str, bytes]] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        endpoint = self.path.split("?", 1)[0].rsplit("/", 1)[-1]
        status, ctype, body = self.answers.get(endpoint, self.answers["*"])
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[tuple[str, dict]]:
    answers: dict[str, tuple[int, str, bytes]] = {
        "version": (200, "application/json", b'{"version":"2.1.1"}'),
        "*": (200, "text/plain", b""),
    }
    handler = type("Handler", (_Scripted,), {"answers": answers})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", answers
    server.shutdown()


HTML = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


@pytest.mark.parametrize("status", [200, 502])
@pytest.mark.parametrize("endpoint, call", [
    ("isPrepared", "is_prepared"), ("getDatafileIds", "datafile_ids"),
    ("getStatus", "status")])
def test_html_answers_are_transient_and_name_the_ids(scripted, status, endpoint, call):
    url, answers = scripted
    answers[endpoint] = (status, "text/html", HTML)
    with pytest.raises(TransientServiceError) as info:
        getattr(IdsGateway(url, timeout=5), call)(UNKNOWN)
    assert_names_ids(info.value, UNKNOWN)
    assert "<html>" not in str(info.value)
    if status == 502:
        assert info.value.status == 502 and "502 Bad Gateway" in str(info.value)


@pytest.mark.parametrize("body", [b"maybe", b"", b"True\xff", b"<html>true</html>"])
def test_is_prepared_garbage_is_never_not_ready(scripted, body):
    url, answers = scripted
    answers["isPrepared"] = (200, "text/plain", body)
    with pytest.raises(TransientServiceError) as info:
        IdsGateway(url, timeout=5).is_prepared(UNKNOWN)
    assert "isPrepared" in str(info.value)


def test_html_version_at_construction(scripted):
    url, answers = scripted
    answers["version"] = (200, "text/html", HTML)
    answers["*"] = (404, "text/html", HTML)  # python-icat's legacy fallbacks find nothing
    with pytest.raises(TransientServiceError):
        IdsGateway(url, timeout=5).version()


def test_non_ascii_error_json(scripted):
    """python-icat decodes error bodies as ASCII; pollcat reads them as UTF-8."""
    url, answers = scripted
    answers["getStatus"] = (500, "application/json",
                            '{"code":"InternalException","message":"Datei ä fehlt"}'.encode())
    with pytest.raises(TransientServiceError) as info:
        IdsGateway(url, timeout=5).status(UNKNOWN)
    assert "Datei ä fehlt" in str(info.value) and info.value.code == "InternalException"


def test_prepare_answer_that_is_not_a_prepared_id(scripted):
    url, answers = scripted
    answers["prepareData"] = (200, "text/html", HTML)
    with pytest.raises(TransientServiceError) as info:
        IdsGateway(url, timeout=5).prepare(str(uuid.uuid4()), dataset_ids=[1])
    assert "prepareData" in str(info.value)


def test_range_ignored_is_resume_not_supported(scripted):
    url, answers = scripted
    answers["getData"] = (200, "application/octet-stream", b"whole file")
    with pytest.raises(ResumeNotSupported):
        IdsGateway(url, timeout=5).get_prepared(UNKNOWN, offset=3)


def test_environment_proxy_is_used_like_urllib_would(scripted, monkeypatch):
    """python-icat's urllib opener honours `http_proxy`; the pooled opener must too."""
    url, answers = scripted
    answers["isPrepared"] = (200, "text/plain", b"true")
    monkeypatch.setenv("http_proxy", url)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert IdsGateway("http://ids.example.invalid", timeout=5).is_prepared(UNKNOWN) is True


def test_closed_pooled_connection_is_reopened(sim, gateway):
    """A pooled connection the IDS has closed is not reused for the next call."""
    gateway.version()
    pool = gateway._opener._pool.connection_from_url(sim.url)
    for conn in list(pool.pool.queue):
        if conn is not None and conn.sock is not None:
            conn.sock.shutdown(2)  # as if the server had hung up
    assert gateway.version() == "2.1.1"


def test_only_a_get_is_tried_again_after_a_broken_connection():
    """One more try for a GET that broke before any answer; a POST (prepareData) never."""
    error = ProtocolError("Connection aborted.", RemoteDisconnected("closed"))
    assert STALE_CONNECTION_RETRY.increment("GET", "/ids/isPrepared", error=error).total == 0
    with pytest.raises(ProtocolError):
        STALE_CONNECTION_RETRY.increment("POST", "/ids/prepareData", error=error)
    assert not STALE_CONNECTION_RETRY.is_retry("GET", 503, False)  # an answer is final


def test_a_closed_host_pool_is_not_used_again(sim, gateway):
    """The opener keeps the host's pool instead of asking the manager per request; a pool
    closed meanwhile is looked up again, and `close()` forgets the kept ones."""
    gateway.version()
    kept = next(iter(gateway._opener._hosts.values()))
    before = kept.num_requests
    gateway.version()
    assert kept.num_requests == before + 1  # the kept pool served it
    gateway._opener._pool.clear()  # the manager forgets it (evicted: urllib3 < 2 closed it)
    kept.close()
    assert gateway.version() == "2.1.1"
    again = next(iter(gateway._opener._hosts.values()))
    assert again is not kept and again.pool is not None
    gateway.close()
    assert not gateway._opener._hosts
    assert gateway.version() == "2.1.1"
