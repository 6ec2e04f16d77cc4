"""TopCAT's own clients for ICAT and the IDS, over real HTTP.

TopCAT reaches ICAT and the IDS through their public URLs (`IcatClient.java`, `IdsClient.java`,
wire reference §2.8), never in-process. The simulator does the same, so a fault injected on
`/icat` or `/ids` (an error, latency, an expired session) hits TopCAT exactly as it would in
production: for instance an IDS 500 during prepareData expires the download.

Errors come back as two exception types, mirroring how TopCAT classifies them:
`RemoteError` (the service answered >= 400: TopCAT's IdsClient turns 404 into NotFoundException
and anything else into BadRequestException) and `Unreachable` (connection failure or timeout:
Java's IOException).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

import requests

# TopCAT's HttpClient passes no read timeout to ICAT (-1), and `ids.timeout` is unset by default:
# a slow ICAT or IDS makes TopCAT answer late, never give up (sim-fidelity rows 9 and 19). The
# scenario keys `topcat.icat_timeout_s` / `topcat.ids_timeout_s` set one, as a facility may.
ICAT_TIMEOUT_S: float | None = None
IDS_TIMEOUT_S: float | None = None
MAX_URL_IDS = 100  # getSize is split so each URL stays short (IdsClient: about 1024 chars)


class RemoteError(Exception):
    """ICAT or the IDS answered with an error status."""

    def __init__(self, service: str, status: int, code: str, message: str):
        super().__init__(message)
        self.service = service
        self.status = status
        self.code = code
        self.message = message


class Unreachable(Exception):
    """The service could not be reached (connection refused, reset, timeout)."""


@dataclass
class DataSelection:
    """The investigation/dataset/datafile ids of a download (IDS `DataSelection`)."""

    investigation_ids: list[int] = field(default_factory=list)
    dataset_ids: list[int] = field(default_factory=list)
    datafile_ids: list[int] = field(default_factory=list)

    def params(self) -> dict[str, str]:
        """The IDS parameters; empty lists are left out (the IDS rejects empty values)."""
        out = {}
        for key, ids in (("investigationIds", self.investigation_ids),
                         ("datasetIds", self.dataset_ids), ("datafileIds", self.datafile_ids)):
            if ids:
                out[key] = ",".join(str(i) for i in ids)
        return out

    def chunks(self, size: int = MAX_URL_IDS) -> list[DataSelection]:
        """Split into selections of at most `size` ids each (for GET requests)."""
        flat = ([("i", i) for i in self.investigation_ids]
                + [("d", i) for i in self.dataset_ids] + [("f", i) for i in self.datafile_ids])
        out = []
        for start in range(0, len(flat), size):
            part = DataSelection()
            for kind, i in flat[start : start + size]:
                {"i": part.investigation_ids, "d": part.dataset_ids,
                 "f": part.datafile_ids}[kind].append(i)
            out.append(part)
        return out or [DataSelection()]


_local = threading.local()


def _http() -> requests.Session:
    """One keep-alive session per thread: TopCAT's calls to ICAT and the IDS reuse connections
    (as its Java clients do), which keeps 1,000-download scenarios fast to start."""
    session = getattr(_local, "session", None)
    if session is None:
        session = _local.session = requests.Session()
    return session


def _call(service: str, method: str, url: str, timeout: float | None,
          **kwargs: Any) -> requests.Response:
    try:
        resp = _http().request(method, url, timeout=timeout, **kwargs)
    except requests.RequestException as exc:
        raise Unreachable(f"{service} unreachable at {url}: {exc}") from exc
    if resp.status_code >= 400:
        code, message = "", resp.text
        try:
            body = resp.json()
            code, message = str(body.get("code", "")), str(body.get("message", resp.text))
        except ValueError:
            pass
        raise RemoteError(service, resp.status_code, code, message)
    return resp


class IcatClient:
    """The ICAT REST calls TopCAT makes: session lookup, searches, and login (admin script)."""

    def __init__(self, base_url: str, timeout: float | None = ICAT_TIMEOUT_S):
        self.url = base_url.rstrip("/") + "/icat"
        self.timeout = timeout

    def login(self, plugin: str, username: str, password: str) -> str:
        creds = {"plugin": plugin, "credentials": [{"username": username},
                                                   {"password": password}]}
        resp = _call("icat", "POST", f"{self.url}/session", self.timeout,
                     data={"json": json.dumps(creds)})
        return str(resp.json()["sessionId"])

    def user_name(self, session_id: str) -> str:
        resp = _call("icat", "GET", f"{self.url}/session/{session_id}", self.timeout)
        return str(resp.json()["userName"])

    def search(self, session_id: str, query: str) -> list[Any]:
        resp = _call("icat", "GET", f"{self.url}/entityManager", self.timeout,
                     params={"sessionId": session_id, "query": query})
        result = resp.json()
        return result if isinstance(result, list) else [result]

    def full_name(self, session_id: str) -> str | None:
        rows = self.search(session_id,
                           "select user.fullName from User user where user.name = :user")
        return rows[0] if rows and isinstance(rows[0], str) else None


class IdsClient:
    """The IDS calls TopCAT makes (`IdsClient.java`): always `zip=true`."""

    def __init__(self, base_url: str, timeout: float | None = IDS_TIMEOUT_S):
        self.url = base_url.rstrip("/") + "/ids"
        self.timeout = timeout

    def prepare_data(self, session_id: str, selection: DataSelection) -> str:
        form = {"sessionId": session_id, "zip": "true", **selection.params()}
        resp = _call("ids", "POST", f"{self.url}/prepareData", self.timeout, data=form)
        return resp.text.strip()

    def is_prepared(self, prepared_id: str) -> bool:
        resp = _call("ids", "GET", f"{self.url}/isPrepared", self.timeout,
                     params={"zip": "true", "preparedId": prepared_id})
        return resp.text.strip().lower() == "true"

    def is_two_level(self) -> bool:
        resp = _call("ids", "GET", f"{self.url}/isTwoLevel", self.timeout)
        return resp.text.strip().lower() == "true"

    def get_size(self, session_id: str, selection: DataSelection) -> int:
        total = 0
        for part in selection.chunks():
            resp = _call("ids", "GET", f"{self.url}/getSize", self.timeout,
                         params={"sessionId": session_id, **part.params()})
            total += int(resp.text.strip())
        return total
