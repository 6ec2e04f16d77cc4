"""Keep passwords, ICAT session ids and preparedIds out of every log line and every text pollcat
writes (reasons, ledger, manifest, report).

A preparedId lets anyone fetch the data, a session id acts as the functional account, and both
travel in URLs (`getData?sessionId=...`, `/icat/session/<id>`) that urllib3 logs at DEBUG and
that error messages quote.

**Where.** The filter sits on *handlers*: a filter on a logger sees only the records created on
that very logger, not those of its children (`pollcat.icat`, `icat.client`, `fsspec.local`), while
every record that is written anywhere passes a handler. `install()` puts one filter on every
handler that exists when it runs: the root's, Prefect's console and API (run log) handlers, any
library's own, and `logging.lastResort`. Call it at each entry point once logging is configured
(the CLI's `main`, the start of a flow run); it is idempotent, so calling it again after someone
added a handler costs nothing.

**What.** `redact(text)` removes
- every UUID: ICAT issues session ids and the IDS preparedIds as `UUID.randomUUID()` strings
  (wire reference §1), and pollcat has no other UUID worth a log line;
- the value of `sessionId`, `preparedId` and `password` as a query or form field, a JSON or
  Python-dict member, whatever its shape, and the id in ICAT's `/session/<id>` path;
- literal values registered with `register_secret` (the functional account's password, and its
  URL- and JSON-encoded forms), for secrets that have no recognisable shape. Values shorter than
  four characters are not registered: replacing them everywhere would mangle every line.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from urllib.parse import quote, quote_plus

MASK = "***"
_KEYS = r"(?:sessionId|preparedId|password)"
_PATTERNS = [
    # JSON and Python-dict members: "sessionId": "…", 'preparedId': '…'
    (re.compile(rf'("{_KEYS}"\s*:\s*")(?:[^"\\]|\\.)*(")', re.I), rf"\1{MASK}\2"),
    (re.compile(rf"('{_KEYS}'\s*:\s*')[^']*(')", re.I), rf"\1{MASK}\2"),
    # the same JSON, percent-encoded in a form body: %22password%22%3A%22…
    (re.compile(rf"(%22{_KEYS}%22%3A(?:%20)*(?:%22)?)(?:(?!%22|%2C|%7D)[^&\s])+", re.I),
     rf"\1{MASK}"),
    # query strings and form bodies, also percent-encoded: sessionId=…, sessionId%3D…
    (re.compile(rf"({_KEYS}(?:=|%3D))[^&\s\"'<>]+", re.I), rf"\1{MASK}"),
    # ICAT REST: GET/PUT/DELETE /icat/session/<sessionId>
    (re.compile(r"(/session/)[^/?#\s\"'<>]+"), rf"\1{MASK}"),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I), MASK),
]
_MIN_SECRET = 4
_secrets: frozenset[str] = frozenset()
_secrets_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """A value without a recognisable shape that must never be written (e.g. a password)."""
    global _secrets
    if not value or len(value) < _MIN_SECRET:
        return
    forms = {value, quote(value, safe=""), quote_plus(value), json.dumps(value)[1:-1]}
    with _secrets_lock:
        _secrets = _secrets | {f for f in forms if len(f) >= _MIN_SECRET}


def redact(text: str) -> str:
    """`text` without secrets; use it for every reason, ledger entry, manifest and report."""
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    for secret in sorted(_secrets, key=len, reverse=True):  # longest first: no partial leftovers
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites a record's message, traceback and stack text before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is logging's problem; never hide it
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text when it is set, so the traceback is redacted once here
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FILTER = RedactingFilter()


def _all_handlers() -> list[logging.Handler]:
    loggers = [logging.getLogger()] + [
        logger for logger in list(logging.Logger.manager.loggerDict.values())
        if isinstance(logger, logging.Logger)]
    handlers = [h for logger in loggers for h in logger.handlers]
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    return handlers


def install() -> None:
    """Put the redacting filter on every handler that exists now (idempotent)."""
    for handler in _all_handlers():
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)


def installed_on(handler: logging.Handler) -> bool:
    """Whether `handler` redacts (for tests and for entry points that add their own handler)."""
    return _FILTER in handler.filters
