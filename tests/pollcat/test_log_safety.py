"""No password, ICAT session id or preparedId reaches any log record, from any logger, at DEBUG.

The redaction sits on handlers (design review §0 defect 4: a filter on the `pollcat` logger never
saw the records of `pollcat.icat`, `icat.client` or `fsspec.local`), and the entry points install
it. The same `redact` cleans the texts pollcat writes itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from pollcat import cli, logsafe
from tests.conftest import scenario
from tests.support import downloads, statuses, wait_status

ALICE = {"user": "simple/alice", "transport": "globus", "file_name": "alice_run42",
         "email": "alice@example.org", "items": [{"investigation": "INV-001", "dataset": "run-42"}]}
# a fixed id: it is in the test ids, which every xdist worker must collect alike
SID = "852969a6-6e84-4a82-b7ba-dccb3884e2e5"


@pytest.mark.parametrize("text", [
    f"GET /ids/getData?sessionId={SID}&datafileIds=3 HTTP/1.1",
    f"GET /ids/isPrepared?preparedId={SID.upper()} HTTP/1.1",
    f'{{"sessionId": "{SID}", "status": "RESTORING"}}',
    "{'preparedId': 'not-a-uuid-but-a-prepared-id', 'id': 3}",
    '{"credentials": [{"username": "u"}, {"password": "p\\"w"}]}',
    "form: sessionId=opaque-token&value=COMPLETE",
    "form: json=%7B%22password%22%3Aabc%7D sessionId%3Dopaque",
    "PUT /icat/session/opaque-session-token HTTP/1.1",
    f"IDS said: The preparedId {SID} is not known",
])
def test_redact_removes_ids_and_keyed_values(text):
    clean = logsafe.redact(text)
    for secret in (SID, SID.upper(), "not-a-uuid-but-a-prepared-id", 'p\\"w', "opaque", "abc"):
        assert secret not in clean
    assert logsafe.MASK in clean


def test_registered_secret_in_every_encoding():
    logsafe.register_secret("s3cret pass/word")
    for text in ("s3cret pass/word", "s3cret+pass%2Fword", "s3cret%20pass%2Fword"):
        assert "s3cret" not in logsafe.redact(f"login with {text} failed")
    logsafe.register_secret("abc")  # too short to replace everywhere: ignored
    assert logsafe.redact("abc") == "abc"


def test_ordinary_text_is_untouched():
    text = "download 7, datafile 'scan_0001.nxs': size 1048593 != 17 [IDS 404 NotFound]"
    assert logsafe.redact(text) == text


@pytest.fixture
def handler() -> Iterator[logging.Handler]:
    """A fresh root handler, as an operator's logging configuration would add."""
    records: list[logging.LogRecord] = []
    h = logging.Handler(logging.DEBUG)
    h.emit = records.append  # type: ignore[method-assign]
    h.records = records  # type: ignore[attr-defined]
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(h)
    root.setLevel(logging.DEBUG)
    yield h
    root.removeHandler(h)
    root.setLevel(old_level)


@pytest.mark.parametrize("name", ["pollcat", "pollcat.icat", "pollcat.pipeline", "icat.client",
                                  "urllib3.connectionpool", "fsspec.local", "sshfs.spec",
                                  "prefect.client", "some.library"])
def test_handler_filter_sees_every_logger(handler, name):
    logsafe.install()
    logging.getLogger(name).warning("GET /ids/getData?sessionId=%s&x=1", SID)
    (record,) = handler.records
    assert SID not in handler.format(record) and "sessionId=***" in handler.format(record)


def test_traceback_text_is_redacted(handler):
    logsafe.install()
    try:
        raise RuntimeError(f"cannot fetch /ids/getData?preparedId={SID}")
    except RuntimeError:
        logging.getLogger("pollcat.sources").exception("zip stream broke")
    formatted = logging.Formatter().format(handler.records[0])
    assert "Traceback" in formatted and SID not in formatted


def test_install_is_idempotent(handler):
    logsafe.install()
    logsafe.install()
    assert handler.filters.count(logsafe._FILTER) == 1 and logsafe.installed_on(handler)


def _secrets(sim) -> set[str]:
    """Every session id and preparedId the facility has handed out, and the password."""
    found = {"pollpass"} | set(sim.facility.sessions._sessions)
    found |= set(sim.facility.prepared._records)
    for d in downloads(sim.url).values():
        found |= {d.get("sessionId"), d.get("preparedId")} - {None}
    return found


def test_cli_sweep_at_debug_everywhere_leaks_nothing(make_sim, tmp_path, caplog, capsys,
                                                     monkeypatch):
    """A delivery with faults on the way, every logger at DEBUG, through the CLI entry point."""
    sim = make_sim(scenario(downloads=[ALICE]))
    wait_status(sim.url, "RESTORING")
    sim.add_fault(kind="error", service="ids", endpoint="isPrepared", status=502, count=1)
    sim.add_fault(kind="reset", service="ids", endpoint="getData", after_bytes=1000, count=1)
    sim.add_fault(kind="error", service="topcat", endpoint="admin/downloads", status=503,
                  count=1)
    monkeypatch.setenv("POLLCAT_PASSWORD", "pollpass")
    caplog.set_level(logging.DEBUG)
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            monkeypatch.setattr(logger, "level", logging.DEBUG)
    for h in logsafe._all_handlers():  # as in a fresh process: nothing installed yet
        h.removeFilter(logsafe._FILTER)
    assert not logsafe.installed_on(caplog.handler)
    argv = ["sweep", "--icat-url", sim.url, "--ids-url", sim.url, "--topcat-url", sim.url,
            "--facility-name", "LILS", "--username", "pollcat", "--route",
            f"globus=file://{tmp_path / 'out'}", "--state-dir", str(tmp_path / "st"),
            "--poll-budget-seconds", "5", "--json", "-v"]
    for _ in range(5):
        assert cli.main(argv) == 0
        if set(statuses(sim.url).values()) == {"COMPLETE"}:
            break
    assert set(statuses(sim.url).values()) == {"COMPLETE"}
    out = capsys.readouterr()
    text = "\n".join(caplog.handler.format(r) for r in caplog.records)
    text += "\n" + out.out + "\n" + out.err
    assert "urllib3.connectionpool" in {r.name for r in caplog.records}
    assert "sessionId=***" in text and "preparedId=***" in text  # the ids were there to leak
    leaked = sorted(s for s in _secrets(sim) if s in text)
    assert leaked == []
    assert logsafe.installed_on(caplog.handler)  # the entry point installed it
