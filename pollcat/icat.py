"""ICAT over REST with the functional account: log in, stay logged in, search.

Tape restores take hours, longer than an ICAT session lives, so every call goes through
`ensure_fresh()`: refresh when the session nears expiry, log in again when ICAT says SESSION.
The session id is never logged or put in an exception message.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import requests

from pollcat import logsafe
from pollcat.errors import ConfigurationError, PermanentServiceError, SessionError
from pollcat.http import json_body, new_session, request

log = logging.getLogger("pollcat.icat")
SERVICE = "ICAT"
# Front ends cap the request line (Apache LimitRequestLine 8190, Grizzly's 8 KiB head); a
# search is a GET whose query is in the URL, so its length is checked against this.
DEFAULT_MAX_REQUEST_LINE = 8190
DEFAULT_MAX_ENTITIES = 1000  # when /icat/properties cannot say: low, so chunks stay small
_SESSION_ID_PLACEHOLDER = "00000000-0000-0000-0000-000000000000"  # as long as a real one


class IcatSession:
    def __init__(self, base_url: str, *, auth: str, username: str, password: str,
                 timeout: float = 60.0, verify: bool | str = True,
                 refresh_margin_minutes: float = 10.0,
                 max_request_line: int = DEFAULT_MAX_REQUEST_LINE):
        if not username or not password:
            raise ConfigurationError("the functional account needs a user name and a password")
        self.base_url = base_url.rstrip("/")
        self.auth = auth
        self.username = username
        self._password = password
        logsafe.register_secret(password)
        self.timeout = timeout
        self.refresh_margin = refresh_margin_minutes
        self._http = new_session(verify)
        self._sid: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()
        self.user_name: str | None = None
        self.max_request_line = max_request_line
        self._max_entities: int | None = None

    def __repr__(self) -> str:
        return f"IcatSession({self.base_url!r}, user={self.auth}/{self.username})"

    @property
    def url(self) -> str:
        return self.base_url + "/icat"

    def _request(self, method: str, path: str, **kw: Any):
        return request(self._http, SERVICE, method, f"{self.url}/{path}", timeout=self.timeout,
                       **kw)

    def login(self) -> str:
        creds = {"plugin": self.auth,
                 "credentials": [{"username": self.username}, {"password": self._password}]}
        try:
            resp = self._request("POST", "session", data={"json": json.dumps(creds)})
        except PermanentServiceError as exc:
            raise ConfigurationError(
                f"ICAT refused the functional account {self.auth}/{self.username}: "
                f"{exc.message}", service=SERVICE, status=exc.status, code=exc.code) from None
        self._sid = json_body(SERVICE, resp, keys=("sessionId",))["sessionId"]
        info = self._session_info()
        self.user_name = info["userName"]
        self._expires_at = time.monotonic() + 60.0 * float(info["remainingMinutes"])
        log.info("logged in to ICAT as %s", self.user_name)
        return self._sid

    def session_id(self) -> str:
        """A session that is valid for at least the refresh margin."""
        with self._lock:
            if self._sid is None:
                return self.login()
            remaining_min = (self._expires_at - time.monotonic()) / 60.0
            if remaining_min < self.refresh_margin:
                self._refresh_or_login()
            return self._sid  # type: ignore[return-value]

    def _refresh_or_login(self) -> None:
        try:
            self._request("PUT", f"session/{self._sid}")
            info = self._session_info()
            self._expires_at = time.monotonic() + 60.0 * float(info["remainingMinutes"])
            log.info("refreshed the ICAT session")
        except PermanentServiceError:
            self.login()

    def _session_info(self) -> dict[str, Any]:
        return json_body(SERVICE, self._request("GET", f"session/{self._sid}"),
                         keys=("userName", "remainingMinutes"))

    def invalidate(self) -> None:
        """Forget the session (after a SESSION error elsewhere, e.g. from TopCAT or the IDS)."""
        with self._lock:
            self._sid = None

    def relogin(self) -> str:
        with self._lock:
            return self.login()

    def search(self, query: str) -> list[Any]:
        """An entityManager search; logs in again once if the session has gone."""
        for attempt in (1, 2):
            sid = self.session_id()
            try:
                return json_body(SERVICE, self._request(
                    "GET", "entityManager", params={"sessionId": sid, "query": query}), list)
            except PermanentServiceError as exc:
                if exc.code == "SESSION" and attempt == 1:
                    log.info("ICAT session gone; logging in again")
                    self.invalidate()
                    continue
                if exc.code == "SESSION":
                    raise SessionError(exc.message, service=SERVICE, status=exc.status,
                                       code=exc.code) from None
                raise
        raise AssertionError("unreachable")

    def max_entities(self) -> int:
        """ICAT's `maxEntities` (GET /icat/properties), read once; a conservative default when
        the server does not publish it. Every returned entity counts, INCLUDEd ones too."""
        if self._max_entities is None:
            try:
                value = int(self._request("GET", "properties").json()["maxEntities"])
                if value < 1:
                    raise ValueError(value)
            except (ValueError, KeyError, TypeError, PermanentServiceError) as exc:
                log.warning("ICAT did not publish a usable maxEntities (%s); assuming %d",
                            exc, DEFAULT_MAX_ENTITIES)
                value = DEFAULT_MAX_ENTITIES
            self._max_entities = value
        return self._max_entities

    def search_request_line(self, query: str) -> int:
        """Bytes of the request line `search(query)` sends: `GET <path>?<params> HTTP/1.1`.

        Built by the same `requests` encoding as the real call, with a placeholder of a session
        id's length (the id itself is never needed, nor logged)."""
        prepared = requests.PreparedRequest()
        prepared.prepare_url(f"{self.url}/entityManager",
                             {"sessionId": _SESSION_ID_PLACEHOLDER, "query": query})
        target = prepared.path_url
        return len("GET ") + len(target) + len(" HTTP/1.1")

    def logout(self) -> None:
        with self._lock:
            if self._sid is None:
                return
            try:
                self._request("DELETE", f"session/{self._sid}")
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
            self._sid = None
