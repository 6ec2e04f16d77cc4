"""The IDS, through python-icat's `IDSClient`, made safe for unattended use.

python-icat's client has no timeouts, does not check for 206 on resume, and turns a non-ASCII
error body into `UnicodeDecodeError` (python-icat notes §1.4). `IdsGateway` keeps the client but
gives it an opener with a timeout and a UTF-8-safe error handler, checks the status of ranged
reads, and translates every IDS error into pollcat's transient/permanent families.
"""

from __future__ import annotations

import copy
import functools
import http.client
import json
import socket
import ssl
import urllib.error
from collections.abc import Callable, Iterable
from typing import Any, TypeVar
from urllib.request import HTTPDefaultErrorHandler, HTTPHandler, HTTPSHandler, build_opener

from icat.exception import IDSError, translateError
from icat.ids import DataSelection, IDSClient

from pollcat.errors import (
    NotReady,
    PermanentServiceError,
    PreparedIdUnknown,
    RestoreFailed,
    ResumeNotSupported,
    TransientServiceError,
)

T = TypeVar("T")
SERVICE = "IDS"


class _Utf8ErrorHandler(HTTPDefaultErrorHandler):
    """Like python-icat's handler, but decodes UTF-8 and never loses the status code."""

    def http_error_default(self, req, fp, code, msg, hdrs):
        raw = fp.read()
        text = raw.decode("utf-8", "replace")
        try:
            body = json.loads(text)
            err = translateError(body, code, "IDS")
        except Exception:
            snippet = text.strip().replace("\n", " ")[:200]
            raise _plain_error(code, snippet or str(msg)) from None
        raise err


def _plain_error(status: int, message: str):
    cls = TransientServiceError if status >= 500 or status == 429 else PermanentServiceError
    return cls(message, service=SERVICE, status=status)


def translate(exc: BaseException) -> BaseException:
    """Map an exception from an IDS call to pollcat's error families."""
    if isinstance(exc, IDSError):
        status = getattr(exc, "status", None) or 500
        code = getattr(exc, "type", None) or type(exc).__name__
        message = getattr(exc, "message", None) or str(exc)
        if status == 404 and "preparedId" in message:
            return PreparedIdUnknown(message, service=SERVICE, status=status, code=code)
        if status == 500 and "Restore failed" in message:
            return RestoreFailed(message, service=SERVICE, status=status, code=code)
        if status == 503:
            return NotReady(message, service=SERVICE, status=status, code=code)
        if status >= 500:
            return TransientServiceError(message, service=SERVICE, status=status, code=code)
        return PermanentServiceError(message, service=SERVICE, status=status, code=code)
    if isinstance(exc, urllib.error.HTTPError):
        return _plain_error(exc.code, str(exc.reason))
    if isinstance(exc, (urllib.error.URLError, OSError, http.client.HTTPException,
                        socket.timeout)):
        reason = getattr(exc, "reason", exc)
        return TransientServiceError(f"cannot reach the IDS: {reason}", service=SERVICE)
    return exc


def _call(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except (TransientServiceError, PermanentServiceError):
        raise
    except Exception as exc:  # noqa: BLE001 - translated, never swallowed
        mapped = translate(exc)
        if mapped is exc:
            raise
        raise mapped from exc


def ssl_context(verify: bool | str) -> ssl.SSLContext | None:
    """`True`: system CAs; `False`: no verification; a path: that CA bundle."""
    if verify is True:
        return None
    if verify is False:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=str(verify))


class RangedResponse:
    """A getData body that starts at the requested offset (a `Readable` for the transfer)."""

    def __init__(self, resp: http.client.HTTPResponse):
        self._resp = resp
        self.headers = resp.headers
        self.status = resp.status

    def read(self, n: int = -1) -> bytes:
        try:
            return self._resp.read(n)
        except TimeoutError as exc:
            raise TransientServiceError("IDS stream stalled (read timeout)",
                                        service=SERVICE) from exc

    def close(self) -> None:
        self._resp.close()


class IdsGateway:
    """One IDS (a base URL without `/ids`), shared by threads; sessions are passed per call."""

    def __init__(self, base_url: str, *, timeout: float = 60.0, verify: bool | str = True):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.verify = verify
        self._client: IDSClient | None = None

    @property
    def url(self) -> str:
        return self.base_url + "/ids"

    def _base(self) -> IDSClient:
        if self._client is None:
            ctx = ssl_context(self.verify)
            client = IDSClient.__new__(IDSClient)
            client.url = self.url + "/"
            client.sessionId = None
            opener = build_opener(HTTPHandler, HTTPSHandler(context=ctx), _Utf8ErrorHandler)
            opener.open = functools.partial(opener.open, timeout=self.timeout)  # type: ignore
            client.opener = opener
            _call(lambda: client.version())
            self._client = client
        return self._client

    def _with_session(self, session_id: str | None) -> IDSClient:
        client = copy.copy(self._base())
        client.sessionId = session_id
        return client

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
        return bool(_call(lambda: self._base().isPrepared(prepared_id)))

    def prepare(self, session_id: str, *, investigation_ids: Iterable[int] = (),
                dataset_ids: Iterable[int] = (), datafile_ids: Iterable[int] = (),
                zip: bool = True) -> str:
        sel = DataSelection({"investigationIds": list(investigation_ids),
                             "datasetIds": list(dataset_ids),
                             "datafileIds": list(datafile_ids)})
        client = self._with_session(session_id)
        return str(_call(lambda: client.prepareData(sel, zipFlag=zip))).strip()

    def reset(self, prepared_id: str) -> None:
        _call(lambda: self._base().reset(prepared_id))

    def datafile_ids(self, prepared_id: str) -> list[int]:
        return [int(i) for i in _call(lambda: self._base().getDatafileIds(prepared_id))]

    def status(self, prepared_id: str) -> str:
        return str(_call(lambda: self._base().getStatus(prepared_id)))

    def get_datafile(self, session_id: str, datafile_id: int, offset: int = 0) -> RangedResponse:
        """One raw datafile (direct form); the body starts exactly at `offset`."""
        client = self._with_session(session_id)
        sel = DataSelection({"datafileIds": [datafile_id]})
        resp = _call(lambda: client.getData(sel, offset=offset))
        return _check_range(resp, offset)

    def get_prepared(self, prepared_id: str, offset: int = 0) -> RangedResponse:
        """The prepared selection's stream (a zip when the preparation asked for one)."""
        resp = _call(lambda: self._base().getData(prepared_id, offset=offset))
        return _check_range(resp, offset)


def _check_range(resp: Any, offset: int) -> RangedResponse:
    """python-icat never checks the status; a 200 to a ranged request restarts at byte 0."""
    if offset > 0 and resp.status != 206:
        resp.close()
        raise ResumeNotSupported(f"IDS answered {resp.status} to Range: bytes={offset}-",
                                 service=SERVICE, status=resp.status)
    return RangedResponse(resp)
