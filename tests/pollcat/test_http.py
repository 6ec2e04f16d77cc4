"""The JSON services' HTTP layer: urllib3 `Retry` for idempotent calls only, and answers that are
not what ICAT or TopCAT speak becoming transient errors that name the service."""

from __future__ import annotations

import http.server
import json
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import requests
from urllib3.exceptions import MaxRetryError, NewConnectionError

from pollcat import http as pollhttp
from pollcat.errors import PermanentServiceError, TransientServiceError
from pollcat.icat import IcatSession
from pollcat.topcat import TopcatAdmin
from tests.conftest import scenario

SECRET = str(uuid.uuid4())


class _Scripted(http.server.BaseHTTPRequestHandler):
    """Answers each request with the next scripted (status, headers, body); counts requests."""

    protocol_version = "HTTP/1.1"
    script: list[tuple[int, dict[str, str], bytes]] = []
    seen: list[str] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.seen.append(self.command)
        status, headers, body = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_HEAD = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, list, list]]:
    script: list = []
    seen: list[str] = []
    handler = type("Handler", (_Scripted,), {"script": script, "seen": seen})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}", script, seen
    srv.shutdown()


OK = (200, {"Content-Type": "application/json"}, b'{"ok": true}')
BUSY = (503, {"Content-Type": "text/html"}, b"<html><h1>503 Service Unavailable</h1></html>")


def call(url: str, method: str = "GET") -> requests.Response:
    return pollhttp.request(pollhttp.new_session(True), "TopCAT", method, url + "/x", timeout=5)


def test_get_is_retried_through_5xx(server):
    url, script, seen = server
    script[:] = [BUSY, BUSY, OK]
    assert call(url).json() == {"ok": True}
    assert seen == ["GET"] * 3


@pytest.mark.parametrize("method", ["PUT", "POST"])
def test_put_and_post_are_sent_once(server, method):
    url, script, seen = server
    script[:] = [BUSY, OK]
    with pytest.raises(TransientServiceError) as info:
        call(url, method)
    assert seen == [method]
    assert info.value.status == 503 and "TopCAT" in str(info.value)


def test_retries_are_few_and_then_the_service_message(server):
    url, script, seen = server
    script[:] = [BUSY]
    with pytest.raises(TransientServiceError) as info:
        call(url)
    assert len(seen) == 1 + pollhttp.RETRY_TOTAL
    assert "503 Service Unavailable" in str(info.value) and "<h1>" not in str(info.value)


def test_retry_after_is_respected(server):
    url, script, seen = server
    script[:] = [(503, {"Retry-After": "1"}, b""), OK]
    started = time.monotonic()
    call(url)
    assert time.monotonic() - started >= 0.9 and len(seen) == 2


def test_retry_after_is_capped():
    resp = type("R", (), {"headers": {"Retry-After": "3600"}})()
    assert pollhttp.retry_policy().get_retry_after(resp) == pollhttp.RETRY_AFTER_CAP_S


def test_refused_connection_repeats_only_idempotent_calls():
    error = NewConnectionError(None, "refused")
    assert pollhttp.retry_policy().increment("GET", "/x", error=error).total == \
        pollhttp.RETRY_TOTAL - 1
    with pytest.raises(MaxRetryError):
        pollhttp.retry_policy().increment("PUT", "/x", error=error)


def test_nothing_listening_is_transient_without_the_url():
    session = pollhttp.new_session(True)
    with pytest.raises(TransientServiceError) as info:
        pollhttp.request(session, "ICAT", "GET", "http://127.0.0.1:9/icat/entityManager",
                         timeout=2, params={"sessionId": SECRET})
    assert "cannot reach ICAT" in str(info.value) and SECRET not in str(info.value)
    assert info.value.__cause__ is None


@pytest.mark.parametrize("body", [
    b"<html><body>Bad Gateway</body></html>",  # an HTML page with status 200
    b'{"sessionId": "abc',                      # truncated JSON
    b'{"x": "\xff\xfe"}',                       # not UTF-8
    b"[1, 2]",                                  # JSON of the wrong shape
    b'{"other": 1}',                            # an object without the promised field
])
def test_garbage_answers_are_transient_and_name_the_service(server, body):
    url, script, _ = server
    script[:] = [(200, {}, body)]
    resp = call(url)
    with pytest.raises(TransientServiceError) as info:
        pollhttp.json_body("ICAT", resp, keys=("sessionId",))
    assert "ICAT answered" in str(info.value) and info.value.service == "ICAT"


def test_non_ascii_json_is_an_answer(server):
    url, script, _ = server
    script[:] = [(200, {}, json.dumps({"name": "Grüße ☃"}, ensure_ascii=False).encode())]
    assert pollhttp.json_body("TopCAT", call(url)) == {"name": "Grüße ☃"}


def test_error_text_is_redacted(server):
    url, script, _ = server
    script[:] = [(400, {}, f"<p>bad request /x?sessionId={SECRET}</p>".encode())]
    with pytest.raises(PermanentServiceError) as info:
        call(url)
    assert SECRET not in str(info.value) and "bad request" in str(info.value)


# -- the same rules through ICAT's and TopCAT's clients, against the simulator --------------

def icat_for(sim) -> IcatSession:
    return IcatSession(sim.url, auth="simple", username="pollcat", password="pollpass",
                       timeout=5)


def test_icat_search_truncated_json(make_sim):
    sim = make_sim(scenario())
    icat = icat_for(sim)
    assert icat.search("SELECT f FROM Facility f") != []
    sim.add_fault(kind="truncate", service="icat", endpoint="entityManager", after_bytes=3)
    with pytest.raises(TransientServiceError) as info:
        icat.search("SELECT f FROM Facility f")
    assert info.value.service == "ICAT"


def test_icat_transient_search_error_is_retried_by_the_session(make_sim):
    sim = make_sim(scenario())
    icat = icat_for(sim)
    sim.add_fault(kind="error", service="icat", endpoint="entityManager", status=502, count=2)
    assert icat.search("SELECT f FROM Facility f") != []


def test_topcat_corrupt_answer(make_sim):
    sim = make_sim(scenario())
    topcat = TopcatAdmin(sim.url, "LILS", icat_for(sim), timeout=5)
    sim.add_fault(kind="corrupt", service="topcat", endpoint="admin/downloads", after_bytes=0)
    with pytest.raises(TransientServiceError) as info:
        topcat.pending("globus")
    assert info.value.service == "TopCAT"


def test_topcat_unreadable_row(make_sim, monkeypatch):
    sim = make_sim(scenario())
    topcat = TopcatAdmin(sim.url, "LILS", icat_for(sim), timeout=5)
    monkeypatch.setattr("pollcat.topcat.json_body", lambda *a, **k: [{"no id": 1}])
    with pytest.raises(TransientServiceError) as info:
        topcat.pending("globus")
    assert "cannot read" in str(info.value)
