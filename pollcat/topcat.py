"""TopCAT's admin API: find downloads, mark them COMPLETE or EXPIRED, ask for a new prepare.

pollcat authenticates as the functional account, which must be in TopCAT's `adminUserNames`.
TopCAT answers 403 alike for an expired session and a non-admin account (wire reference §2.3),
so a 403 is retried once with a fresh ICAT session before it is reported as configuration.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pollcat.errors import ConfigurationError, PermanentServiceError, TransientServiceError
from pollcat.http import json_body, new_session, request, snippet
from pollcat.icat import IcatSession

log = logging.getLogger("pollcat.topcat")
SERVICE = "TopCAT"
ENUM = "org.icatproject.topcat.domain.DownloadStatus"
_SAFE_LITERAL = re.compile(r"^[A-Za-z0-9_.\-]+$")


def parse_date(value: str | None) -> datetime | None:
    """Lenient: `2020-03-01T15:57:28Z[UTC]`, `...+01:00`, fractions, or no zone (UTC)."""
    if not value:
        return None
    text = re.sub(r"\[.*\]$", "", value.strip())
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


@dataclass
class Download:
    id: int
    facility_name: str
    user_name: str
    transport: str
    file_name: str
    status: str
    prepared_id: str | None = None
    full_name: str | None = None
    email: str | None = None
    is_two_level: bool = True
    is_deleted: bool = False
    size: int = 0
    items: list[tuple[str, int]] = field(default_factory=list)
    created_at: datetime | None = None
    completed_at: datetime | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Download:
        return cls(
            id=int(d["id"]), facility_name=d.get("facilityName", ""),
            user_name=d.get("userName", ""), transport=d.get("transport", ""),
            file_name=d.get("fileName", ""), status=d.get("status", ""),
            prepared_id=d.get("preparedId"), full_name=d.get("fullName"),
            email=d.get("email"), is_two_level=bool(d.get("isTwoLevel", True)),
            is_deleted=bool(d.get("isDeleted", False)), size=int(d.get("size") or 0),
            items=[(i["entityType"], int(i["entityId"])) for i in d.get("downloadItems") or []],
            created_at=parse_date(d.get("createdAt")),
            completed_at=parse_date(d.get("completedAt")),
        )

    def selection(self) -> dict[str, list[int]]:
        """The download's items as IDS selection parameters."""
        out: dict[str, list[int]] = {"investigationIds": [], "datasetIds": [], "datafileIds": []}
        key = {"investigation": "investigationIds", "dataset": "datasetIds",
               "datafile": "datafileIds"}
        for etype, eid in self.items:
            out[key[etype.lower()]].append(eid)
        return out


def _download(row: Any) -> Download:
    """One row of an admin query; a row TopCAT's protocol would not send is a service fault."""
    try:
        return Download.from_json(row)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise TransientServiceError(
            f"TopCAT answered a download pollcat cannot read ({type(exc).__name__}: "
            f"{snippet(str(exc))})", service=SERVICE) from None


def literal(value: str) -> str:
    """A JPQL string literal for a queryOffset; refuses anything that could inject."""
    if not _SAFE_LITERAL.match(value):
        raise ConfigurationError(f"refusing unsafe value in a TopCAT query: {value!r}")
    return f"'{value}'"


class TopcatAdmin:
    def __init__(self, base_url: str, facility: str, icat: IcatSession, *,
                 timeout: float = 60.0, verify: bool | str = True):
        self.base_url = base_url.rstrip("/")
        self.facility = facility
        self.icat = icat
        self.timeout = timeout
        self._http = new_session(verify)

    @property
    def url(self) -> str:
        return self.base_url + "/topcat"

    def _admin(self, method: str, path: str, build: Callable[[str], dict[str, Any]]):
        for attempt in (1, 2):
            sid = self.icat.session_id()
            params = build(sid)
            kw: dict[str, Any] = {"params": params} if method in ("GET", "DELETE") \
                else {"data": params}
            try:
                return request(self._http, SERVICE, method, f"{self.url}/admin/{path}",
                               timeout=self.timeout, **kw)
            except PermanentServiceError as exc:
                if exc.status == 403 and attempt == 1:
                    self.icat.invalidate()
                    continue
                if exc.status == 403:
                    raise ConfigurationError(
                        f"TopCAT refused admin access for {self.icat.user_name}; is it in "
                        f"adminUserNames? ({exc.message})", service=SERVICE, status=403,
                        code=exc.code) from None
                raise
        raise AssertionError("unreachable")

    def query(self, where: str, *, page_size: int = 100) -> Iterator[Download]:
        """All downloads matching `where` (a queryOffset condition), fetched page by page."""
        offset = 0
        while True:
            q = f"where {where} order by download.id asc limit {offset}, {page_size}"
            rows = json_body(SERVICE, self._admin("GET", "downloads", lambda sid, q=q: {
                "facilityName": self.facility, "sessionId": sid, "queryOffset": q}), list)
            for row in rows:
                yield _download(row)
            if len(rows) < page_size:
                return
            offset += page_size

    def pending(self, transport: str, status: str = "RESTORING", *,
                page_size: int = 100) -> list[Download]:
        where = (f"download.facilityName = {literal(self.facility)} "
                 f"and download.transport = {literal(transport)} "
                 f"and download.status = {ENUM}.{status} and download.isDeleted = false")
        return list(self.query(where, page_size=page_size))

    def get(self, download_id: int) -> Download | None:
        rows = list(self.query(f"download.id = {int(download_id)}", page_size=2))
        return rows[0] if rows else None

    def set_status(self, download_id: int, value: str, custom_value: str | None = None) -> None:
        def build(sid: str) -> dict[str, Any]:
            form = {"facilityName": self.facility, "sessionId": sid, "value": value}
            if custom_value:
                form["customValue"] = custom_value
            return form
        self._admin("PUT", f"download/{int(download_id)}/status", build)
        log.info("TopCAT download %s set %s", download_id, value)

    def prepare(self, download_id: int) -> bool:
        """The successor's admin prepare; False when this TopCAT does not offer it."""
        try:
            self._admin("PUT", f"download/{int(download_id)}/prepare", lambda sid: {
                "facilityName": self.facility, "sessionId": sid})
            return True
        except PermanentServiceError as exc:
            unknown_endpoint = exc.status in (404, 405) and \
                "could not find download" not in (exc.message or "")
            if unknown_endpoint:
                return False
            raise
