"""TopCAT's admin API: find downloads, mark them COMPLETE or EXPIRED, ask for a new prepare.

pollcat authenticates as the functional account, which must be in TopCAT's `adminUserNames`.
TopCAT answers 403 alike for an expired session and a non-admin account (wire reference §2.3),
so a 403 is retried once with a fresh ICAT session before it is reported as configuration.

Facilities run different TopCATs (sim-fidelity audit §3.1): the admin `prepare` exists only from
datagateway-download-api 3.1.0 and the `customValue` of the status PUT only from 3.2.0; older
servers answer 404 or silently ignore the field. So the version is read once
(`GET /topcat/version`) and the calls adapt to it. Text sent into TopCAT's mails is rendered by
Apache `StringSubstitutor`, which expands `${...}` even inside values, so it is escaped first.
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
_VERSION = re.compile(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?")
CUSTOM_VALUE_SINCE = (3, 2, 0)  # datagateway-download-api "Rename customDownloadUrl to customValue"
ADMIN_PREPARE_SINCE = (3, 1, 0)  # datagateway-download-api AdminResource.prepareDownload
_WARNED_NO_CUSTOM_VALUE: set[str] = set()  # TopCAT base URLs already warned about
# The admin prepare runs prepareData synchronously, and the IDS asks ICAT once or twice per
# selected item, so a large cart takes minutes; TopCAT itself sets no timeout on that call.
DEFAULT_PREPARE_TIMEOUT_S = 900.0


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


def parse_version(text: str) -> tuple[int, int, int] | None:
    """`3.2.1-SNAPSHOT` -> (3, 2, 1); None when the text has no leading `x.y`."""
    m = _VERSION.match(text or "")
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


@dataclass(frozen=True)
class TopcatFeatures:
    """What this TopCAT offers an admin client, decided by its version string."""

    version_text: str
    version: tuple[int, int, int] | None

    @property
    def supports_custom_value(self) -> bool:
        return self.version is not None and self.version >= CUSTOM_VALUE_SINCE

    @property
    def supports_admin_prepare(self) -> bool:
        return self.version is not None and self.version >= ADMIN_PREPARE_SINCE

    @classmethod
    def of(cls, version_text: str) -> TopcatFeatures:
        return cls(version_text, parse_version(version_text))


def escape_substitution(value: str) -> str:
    """Make `value` come out of `StringSubstitutor` unchanged: every `${` becomes `$${`.

    Each `$${` loses exactly one `$` when rendered, so text that already contains `$${` also
    survives; a `$` not followed by `{` is left alone by the substitutor and by this function.
    """
    return value.replace("${", "$${")


def literal(value: str) -> str:
    """A JPQL string literal for a queryOffset; refuses anything that could inject."""
    if not _SAFE_LITERAL.match(value):
        raise ConfigurationError(f"refusing unsafe value in a TopCAT query: {value!r}")
    return f"'{value}'"


class TopcatAdmin:
    def __init__(self, base_url: str, facility: str, icat: IcatSession, *,
                 timeout: float = 60.0, verify: bool | str = True,
                 prepare_timeout_s: float = DEFAULT_PREPARE_TIMEOUT_S):
        self.base_url = base_url.rstrip("/")
        self.prepare_timeout_s = max(prepare_timeout_s, timeout)
        self.facility = facility
        self.icat = icat
        self.timeout = timeout
        self._http = new_session(verify)
        self._features: TopcatFeatures | None = None

    @property
    def url(self) -> str:
        return self.base_url + "/topcat"

    @property
    def features(self) -> TopcatFeatures:
        """TopCAT's version and feature flags, read once (`GET /topcat/version`, no login).

        A service error propagates (transient ones are retried by the caller); a version that
        cannot be parsed counts as the oldest TopCAT, which every path below can handle.
        """
        if self._features is None:
            resp = request(self._http, SERVICE, "GET", f"{self.url}/version",
                           timeout=self.timeout)
            try:
                text = resp.json()
            except ValueError:
                text = resp.text
            features = TopcatFeatures.of(str(text).strip())
            if features.version is None:
                log.warning("TopCAT at %s answered version %r; assuming the oldest feature "
                            "set (no customValue, no admin prepare)", self.base_url, text)
            else:
                log.info("TopCAT at %s is version %s (customValue: %s, admin prepare: %s)",
                         self.base_url, features.version_text,
                         features.supports_custom_value, features.supports_admin_prepare)
            self._features = features
        return self._features

    def _admin(self, method: str, path: str, build: Callable[[str], dict[str, Any]],
               timeout: float | None = None):
        for attempt in (1, 2):
            sid = self.icat.session_id()
            params = build(sid)
            kw: dict[str, Any] = {"params": params} if method in ("GET", "DELETE") \
                else {"data": params}
            try:
                return request(self._http, SERVICE, method, f"{self.url}/admin/{path}",
                               timeout=timeout or self.timeout, **kw)
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

    def is_admin(self) -> bool:
        """Whether TopCAT counts the functional account among its `adminUserNames`
        (`GET /admin/isValidSession`). Only TopCAT's own privilege: ICAT read rules and IDS
        rootUserNames are separate settings and must be checked separately."""
        resp = request(self._http, SERVICE, "GET", f"{self.url}/admin/isValidSession",
                       timeout=self.timeout,
                       params={"facilityName": self.facility, "sessionId": self.icat.session_id()})
        return resp.json() is True

    def query(self, where: str, *, page_size: int = 100,
              after_id: int | None = None) -> Iterator[Download]:
        """All downloads matching `where` (a queryOffset condition) with an id above `after_id`,
        fetched page by page.

        Pages continue after the last id seen (`download.id > N ... limit 0, n`), not at an
        offset: a download that leaves the result while pollcat pages (another worker set it
        COMPLETE) would shift every offset after it and hide a download from this sweep, and
        TopCAT's database answers an id bound from its primary key where an offset costs a
        walk through every row before it."""
        last = int(after_id or 0)
        while True:
            q = (f"where ({where}) and download.id > {last} "
                 f"order by download.id asc limit 0, {page_size}")
            rows = json_body(SERVICE, self._admin("GET", "downloads", lambda sid, q=q: {
                "facilityName": self.facility, "sessionId": sid, "queryOffset": q}), list)
            for row in rows:
                d = _download(row)
                last = max(last, d.id)
                yield d
            if len(rows) < page_size:
                return

    def _of_transport(self, transport: str) -> str:
        return (f"download.facilityName = {literal(self.facility)} "
                f"and download.transport = {literal(transport)} and download.isDeleted = false")

    def pending(self, transport: str, status: str = "RESTORING", *,
                page_size: int = 100, after_id: int | None = None) -> list[Download]:
        """The transport's non-deleted downloads in `status` (above `after_id`), oldest first."""
        where = f"{self._of_transport(transport)} and download.status = {ENUM}.{status}"
        return list(self.query(where, page_size=page_size, after_id=after_id))

    def downloads(self, transport: str, *, page_size: int = 100,
                  after_id: int | None = None) -> list[Download]:
        """The transport's non-deleted downloads in any status with an id above `after_id`,
        oldest first: discovery's bounded question (`Pipeline.discover`). TopCAT's table has no
        index but its primary key, so an id range is the one question it answers without
        reading the facility's whole history."""
        return list(self.query(self._of_transport(transport), page_size=page_size,
                               after_id=after_id))

    def get(self, download_id: int) -> Download | None:
        rows = list(self.query(f"download.id = {int(download_id)}", page_size=2))
        return rows[0] if rows else None

    def set_status(self, download_id: int, value: str, custom_value: str | None = None) -> None:
        """PUT the status; `custom_value` (the delivery location for the user's mail) is sent
        escaped, and only to a TopCAT that knows the field (download-api 3.2.0 and later)."""
        if custom_value and not self.features.supports_custom_value:
            self._warn_no_custom_value()
            custom_value = None

        def build(sid: str) -> dict[str, Any]:
            form = {"facilityName": self.facility, "sessionId": sid, "value": value}
            if custom_value:
                form["customValue"] = escape_substitution(custom_value)
            return form
        self._admin("PUT", f"download/{int(download_id)}/status", build)
        log.info("TopCAT download %s set %s", download_id, value)

    def _warn_no_custom_value(self) -> None:
        """Once per process and TopCAT (sweeps build new clients; the operator needs it once)."""
        if self.base_url in _WARNED_NO_CUSTOM_VALUE:
            return
        _WARNED_NO_CUSTOM_VALUE.add(self.base_url)
        log.warning("TopCAT %s has no customValue (it came with datagateway-download-api "
                    "3.2.0): users will not see the delivery location in their e-mail",
                    self.features.version_text)

    def prepare(self, download_id: int) -> bool:
        """The admin prepare (download-api 3.1.0 and later); False, without a call, when this
        TopCAT does not offer it, so the caller prepares with its own account.

        It waits up to `prepare_timeout_s` (the IDS resolves the selection synchronously). If
        even that passes, the TransientServiceError propagates; TopCAT carries on and stores the
        new preparedId in the download, so the next read of the download finds it (nothing is
        orphaned, and the caller should not count it as a failed preparation).
        """
        if not self.features.supports_admin_prepare:
            return False
        try:
            self._admin("PUT", f"download/{int(download_id)}/prepare", lambda sid: {
                "facilityName": self.facility, "sessionId": sid},
                timeout=self.prepare_timeout_s)
            return True
        except PermanentServiceError as exc:
            unknown_endpoint = exc.status in (404, 405) and \
                "could not find download" not in (exc.message or "")
            if unknown_endpoint:
                return False
            raise
