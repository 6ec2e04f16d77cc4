"""The IDS, through python-icat's `IDSClient`, made safe for unattended use.

python-icat's client is built through its own constructor (which sets `apiversion`, read by its
error paths), but talks through pollcat's opener (python-icat notes §1.4):
- a urllib3 pool: keep-alive (one poll sweep asks `isPrepared` for every pending download) and a
  connect/read timeout (python-icat's urllib opener has none, so a stalled IDS blocks for ever);
- errors decoded as UTF-8 (python-icat decodes them as ASCII and raises `UnicodeDecodeError` on a
  non-ASCII message); an IDS error JSON becomes python-icat's own exception class, anything else
  (a proxy's HTML page) a service error carrying the status and a redacted snippet.
`translate` then maps python-icat's exception classes to pollcat's families, and answers that are
not IDS answers (an HTML page with status 200, `isPrepared` saying neither true nor false, a
preparedId that is not a UUID) become `TransientServiceError`s naming the IDS, never "not ready".

Every preparedId and session id is kept out of messages: `logsafe.redact` runs over every snippet
of IDS text, and chained urllib3 exceptions (whose text quotes the URL) are dropped.
"""

from __future__ import annotations

import copy
import functools
import io
import json
import re
import ssl
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import urllib3
from icat.exception import (
    IDSDataNotOnlineError,
    IDSError,
    IDSInternalError,
    IDSNotFoundError,
    IDSResponseError,
    VersionMethodError,
    translateError,
)
from icat.ids import DataSelection, IDSClient, IDSRequest
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import ProtocolError, ReadTimeoutError

from pollcat.errors import (
    NotReady,
    PermanentServiceError,
    PollcatError,
    PreparedIdUnknown,
    RestoreFailed,
    ResumeNotSupported,
    TransientServiceError,
)
from pollcat.http import IdempotentRetry, is_transient_status, snippet

T = TypeVar("T")
SERVICE = "IDS"
ERROR_BODY_LIMIT = 64 * 1024
PREPARED_STATUSES = frozenset({"ONLINE", "RESTORING", "ARCHIVED"})
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def garbage(call: str, text: str, status: int | None = None) -> TransientServiceError:
    """An answer that is not what the IDS protocol says `call` returns."""
    return TransientServiceError(f"{call} answered something that is not an IDS answer: "
                                 f"{snippet(text)!r}", service=SERVICE, status=status)


def _plain_error(status: int, message: str) -> PollcatError:
    cls = TransientServiceError if is_transient_status(status) else PermanentServiceError
    return cls(message, service=SERVICE, status=status)


@functools.cache
def _system_context() -> ssl.SSLContext:
    """One context with the system CAs for every pool: loading them costs milliseconds."""
    return ssl.create_default_context()


def _pool_options(verify: bool | str) -> dict[str, Any]:
    """`True`: system CAs; `False`: no verification; a path: that CA bundle."""
    if verify is True:
        return {"ssl_context": _system_context()}
    if verify is False:
        return {"cert_reqs": "CERT_NONE", "assert_hostname": False}
    return {"ca_certs": str(verify)}


# One more try for a GET whose connection broke before any answer (typically a pooled connection
# the IDS had just closed); never for a POST, never on an answer: a 503 is the IDS speaking.
STALE_CONNECTION_RETRY = IdempotentRetry(total=1, connect=1, read=1, status=0, other=0,
                                         redirect=0, raise_on_status=False)


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for `url` (`https_proxy`, `no_proxy`, ...), as urllib's
    default opener, which python-icat uses, would pick it."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


class PooledOpener:
    """What python-icat calls as `opener.open(request)`, on one keep-alive urllib3 pool.

    For 2xx, getData gets urllib3's streaming response; every other call gets its body read at
    once, so the connection goes back to the pool even when python-icat never reads the answer
    (`reset`). Raises python-icat's exception for an IDS error JSON, else a pollcat service error.
    """

    def __init__(self, *, timeout: float, verify: bool | str = True, proxy: str | None = None,
                 maxsize: int = 64):
        options: dict[str, Any] = {
            "num_pools": 4, "maxsize": maxsize, "retries": STALE_CONNECTION_RETRY,
            "timeout": urllib3.Timeout(connect=timeout, read=timeout), **_pool_options(verify)}
        self._pool = urllib3.ProxyManager(proxy, **options) if proxy \
            else urllib3.PoolManager(**options)
        self._direct = not proxy
        self._hosts: dict[tuple[str, str], urllib3.HTTPConnectionPool] = {}

    def _host_pool(self, url: str, parts: urllib.parse.SplitResult
                   ) -> urllib3.HTTPConnectionPool:
        """The manager's pool for the URL's host, looked up once rather than per request (the
        manager parses every URL and normalises a key for it: a tenth of the Python time of
        a small getData). A pool the manager closed meanwhile is looked up again."""
        key = (parts.scheme, parts.netloc)
        pool = self._hosts.get(key)
        if pool is None or pool.pool is None:
            pool = self._hosts[key] = self._pool.connection_from_url(url)
        return pool

    def _urlopen(self, req: urllib.request.Request, parts: urllib.parse.SplitResult) -> Any:
        kw: dict[str, Any] = {"body": req.data, "headers": dict(req.header_items()),
                              "redirect": False, "preload_content": False,
                              "decode_content": False}
        if not self._direct:  # a proxy wants the absolute URL: the manager knows how
            return self._pool.urlopen(req.get_method(), req.full_url, **kw)
        target = parts.path + ("?" + parts.query if parts.query else "")
        return self._host_pool(req.full_url, parts).urlopen(
            req.get_method(), target, assert_same_host=False, **kw)

    def open(self, req: urllib.request.Request) -> Any:
        parts = urllib.parse.urlsplit(req.full_url)
        try:
            resp = self._urlopen(req, parts)
        except Urllib3Error as exc:  # its text quotes the URL, so it is not chained
            raise TransientServiceError(f"cannot reach the IDS: {snippet(str(exc), 300)}",
                                        service=SERVICE) from None
        if resp.status >= 400:
            raise _error_from(resp)
        if parts.path.endswith("/getData"):
            return resp
        try:
            return _Answer(resp.read(), resp.status, resp.headers)
        finally:
            resp.release_conn()

    def clear(self) -> None:
        self._pool.clear()
        self._hosts.clear()


class _Answer(io.BytesIO):
    """A short IDS answer, already read: what python-icat needs of a response."""

    def __init__(self, data: bytes, status: int, headers: Any):
        super().__init__(data)
        self.status = status
        self.headers = headers


def _error_from(resp: urllib3.BaseHTTPResponse) -> Exception:
    try:
        text = resp.read(ERROR_BODY_LIMIT).decode("utf-8", "replace")
    except Urllib3Error as exc:  # the answer itself broke off: that says nothing yet
        return TransientServiceError(
            f"the IDS answered {resp.status}, then its message broke off: "
            f"{type(exc).__name__}", service=SERVICE, status=resp.status)
    finally:
        resp.release_conn()
    try:
        body = json.loads(text)
        return translateError(body, resp.status, "IDS")
    except Exception:  # noqa: BLE001 - not an IDS error JSON (HTML from a proxy, unknown code)
        return _plain_error(resp.status, snippet(text) or f"HTTP {resp.status}")


class PollcatIdsClient(IDSClient):
    """python-icat's `IDSClient`, constructed normally, on a `PooledOpener`.

    `IDSClient.__init__` assigns its own urllib opener and at once calls `version()` through it.
    The `opener` property routes that assignment to pollcat's opener, so even the constructor's
    call has a timeout; `apiversion` and everything else are python-icat's.
    """

    def __init__(self, url: str, opener: PooledOpener):
        self._pollcat_opener = opener
        super().__init__(url)

    @property
    def opener(self) -> PooledOpener:
        return self._pollcat_opener

    @opener.setter
    def opener(self, _python_icat_opener: Any) -> None:
        """python-icat's default opener (no timeout, ASCII-only errors) is not used."""

    def isPrepared(self, preparedId: str) -> bool:  # noqa: N802,N803 - python-icat's names
        """Strict: python-icat reads anything but "true" (an HTML page, say) as False."""
        req = IDSRequest(self.url + "isPrepared", {"preparedId": preparedId})
        resp = self.opener.open(req)
        text = resp.read().decode("utf-8", "replace").strip()
        if text.lower() not in ("true", "false"):
            raise garbage("isPrepared", text, resp.status)
        return text.lower() == "true"


def translate(exc: BaseException, *, prepared_id: bool = False) -> BaseException:
    """Map an exception from an IDS call to pollcat's families, by python-icat's classes.

    `prepared_id`: the call named a preparedId, so a 404 means the IDS forgot it.
    """
    if isinstance(exc, PollcatError):
        return exc
    if isinstance(exc, IDSError):
        status = getattr(exc, "status", None) or 500
        kw = {"service": SERVICE, "status": status, "code": getattr(exc, "type", None)}
        message = _message(exc)
        if isinstance(exc, IDSDataNotOnlineError):
            return NotReady(message, **kw)
        if isinstance(exc, IDSNotFoundError) and prepared_id:
            return PreparedIdUnknown(message, **kw)
        # The IDS reports a failed restore only as an InternalException with this text
        if isinstance(exc, IDSInternalError) and "Restore failed" in message:
            return RestoreFailed(message, **kw)
        if is_transient_status(status):
            return TransientServiceError(message, **kw)
        return PermanentServiceError(message, **kw)
    if isinstance(exc, VersionMethodError):
        return PermanentServiceError(f"the IDS is too old: {exc}", service=SERVICE)
    if isinstance(exc, IDSResponseError):
        return garbage("the IDS", str(exc))
    if isinstance(exc, (ValueError, KeyError, TypeError)):
        # JSONDecodeError, UnicodeDecodeError (python-icat decodes answers as ASCII), a JSON
        # without the promised field: the answer was not an IDS answer
        return garbage("the IDS", f"{type(exc).__name__}: {exc}")
    if isinstance(exc, (Urllib3Error, OSError)):
        return TransientServiceError(f"cannot reach the IDS: {snippet(str(exc))}",
                                     service=SERVICE)
    return exc


def _message(exc: IDSError) -> str:
    return snippet(getattr(exc, "message", None) or str(exc), 500)


def _call(fn: Callable[[], T], *, prepared_id: bool = False) -> T:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - translated, never swallowed
        mapped = translate(exc, prepared_id=prepared_id)
        if mapped is exc:
            raise
        raise mapped from None  # the original's text may quote a URL with an id in it


class RangedResponse:
    """A getData body that starts at the requested offset (a `Readable` for the transfer).

    A stalled body raises TransientServiceError (the read timeout passed); a connection that
    breaks or ends short of its length raises ConnectionError, a broken connection to reopen.
    """

    def __init__(self, resp: urllib3.BaseHTTPResponse):
        self._resp = resp
        self.headers = resp.headers
        self.status = resp.status

    def read(self, n: int = -1) -> bytes:
        try:
            return self._resp.read(None if n is None or n < 0 else n)
        except ReadTimeoutError:
            raise TransientServiceError("IDS stream stalled (read timeout)",
                                        service=SERVICE) from None
        except (ProtocolError, Urllib3Error) as exc:
            raise ConnectionError(f"IDS stream broke: {snippet(str(exc))}") from None

    def close(self) -> None:
        """A body read to its end gives its connection back to the pool (keep-alive: the next
        getData of the download reuses it); one abandoned midway closes its connection."""
        if self._resp.length_remaining == 0:
            self._resp.release_conn()
        else:
            self._resp.close()


class IdsGateway:
    """One IDS (a base URL without `/ids`), shared by threads; sessions are passed per call."""

    def __init__(self, base_url: str, *, timeout: float = 60.0, verify: bool | str = True):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.verify = verify
        self._opener = PooledOpener(timeout=timeout, verify=verify,
                                    proxy=proxy_for(self.base_url))
        self._client: PollcatIdsClient | None = None

    @property
    def url(self) -> str:
        return self.base_url + "/ids"

    def _base(self) -> PollcatIdsClient:
        if self._client is None:
            self._client = _call(lambda: PollcatIdsClient(self.url, self._opener))
        return self._client

    def _with_session(self, session_id: str | None) -> PollcatIdsClient:
        client = copy.copy(self._base())
        client.sessionId = session_id
        return client

    def close(self) -> None:
        self._opener.clear()

    # -- calls --
    def version(self) -> str:
        return str(_call(lambda: self._base().version())["version"])

    def is_two_level(self) -> bool:
        return bool(_call(lambda: self._base().isTwoLevel()))

    def service_status(self, session_id: str) -> dict:
        """Needs an account in the IDS's `rootUserNames` (403 otherwise): `pollcat check`
        uses it only to tell the facility which privileges it granted."""
        return _call(lambda: self._with_session(session_id).getServiceStatus())

    def is_prepared(self, prepared_id: str) -> bool:
        return _call(lambda: self._base().isPrepared(prepared_id), prepared_id=True)

    def prepare(self, session_id: str, *, investigation_ids: Iterable[int] = (),
                dataset_ids: Iterable[int] = (), datafile_ids: Iterable[int] = (),
                zip: bool = True) -> str:
        sel = DataSelection({"investigationIds": list(investigation_ids),
                             "datasetIds": list(dataset_ids),
                             "datafileIds": list(datafile_ids)})
        client = self._with_session(session_id)
        answer = str(_call(lambda: client.prepareData(sel, zipFlag=zip))).strip()
        if not _UUID.match(answer):
            raise garbage("prepareData", answer)
        return answer

    def reset(self, prepared_id: str) -> None:
        _call(lambda: self._base().reset(prepared_id), prepared_id=True)

    def datafile_ids(self, prepared_id: str) -> list[int]:
        ids = _call(lambda: self._base().getDatafileIds(prepared_id), prepared_id=True)
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise garbage("getDatafileIds", repr(ids)[:200])
        return ids

    def status(self, prepared_id: str) -> str:
        answer = str(_call(lambda: self._base().getStatus(prepared_id), prepared_id=True))
        if answer not in PREPARED_STATUSES:
            raise garbage("getStatus", answer)
        return answer

    def get_datafile(self, session_id: str, datafile_id: int, offset: int = 0) -> RangedResponse:
        """One raw datafile (direct form); the body starts exactly at `offset`."""
        client = self._with_session(session_id)
        sel = DataSelection({"datafileIds": [datafile_id]})
        resp = _call(lambda: client.getData(sel, offset=offset))
        return _check_range(resp, offset)

    def get_prepared(self, prepared_id: str, offset: int = 0) -> RangedResponse:
        """The prepared selection's stream (a zip when the preparation asked for one)."""
        resp = _call(lambda: self._base().getData(prepared_id, offset=offset),
                     prepared_id=True)
        return _check_range(resp, offset)


def _check_range(resp: Any, offset: int) -> RangedResponse:
    """python-icat never checks the status; a 200 to a ranged request restarts at byte 0."""
    if offset > 0 and resp.status != 206:
        resp.close()
        raise ResumeNotSupported(f"IDS answered {resp.status} to Range: bytes={offset}-",
                                 service=SERVICE, status=resp.status)
    return RangedResponse(resp)
