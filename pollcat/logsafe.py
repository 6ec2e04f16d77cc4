"""Keep session ids and passwords out of logs, whoever logs them.

IDS URLs carry `sessionId=` in the query string, and urllib3 logs request lines at DEBUG, so an
operator who turns on debug logging (or forwards `urllib3` through Prefect's extra loggers) would
otherwise leak live sessions. The filter rewrites every record that passes through the
handlers pollcat installs it on.
"""

from __future__ import annotations

import logging
import re

_PATTERNS = [
    (re.compile(r"(sessionId|preparedId|password)=([^&\s\"']+)", re.I), r"\1=***"),
    (re.compile(r'("(?:sessionId|password)"\s*:\s*")[^"]*(")', re.I), r"\1***\2"),
]
_SECRETS: set[str] = set()


def register_secret(value: str | None) -> None:
    """A value that must never appear in a log line (a password, a session id)."""
    if value and len(value) >= 4:
        _SECRETS.add(value)


def redact(text: str) -> str:
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, "***")
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - never break logging
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


_FILTER = RedactingFilter()
_LOGGERS = ("urllib3", "urllib3.connectionpool", "requests", "pollcat", "icat", "fsspec",
            "sshfs", "asyncssh")


def install() -> None:
    """Attach the filter to the loggers that could see URLs or credentials (idempotent)."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
