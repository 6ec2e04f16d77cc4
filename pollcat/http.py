"""Shared `requests` plumbing for the JSON services (ICAT REST, TopCAT), and the rules that every
service client (the IDS included) uses to read an answer.

Retries at this layer are urllib3's `Retry`, mounted on the session, for idempotent calls only
(GET/HEAD): a dropped connection or a 502/503/504/429 is tried again a few times with a short
backoff, honouring `Retry-After` up to a cap. A PUT or POST (TopCAT's status change, an ICAT
login) is sent at most once, even after a refused connection: whether to repeat it is the
caller's decision, and layers that both retry would multiply each other. Everything that is
still failing after these few tries goes up as a `TransientServiceError`.

An answer that is not what the service speaks (a proxy's HTML error page, truncated JSON, bytes
that are not UTF-8) is a `TransientServiceError` naming the service, never a silent default.
Every snippet of a service's text that goes into an error is redacted first: HTML error pages
and echoed URLs can carry session ids.
"""

from __future__ import annotations

import json
import re
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from pollcat.errors import PermanentServiceError, ServiceError, TransientServiceError
from pollcat.logsafe import redact

IDEMPOTENT = frozenset({"GET", "HEAD"})
RETRY_STATUSES = (429, 502, 503, 504)
RETRY_TOTAL = 3
RETRY_BACKOFF_S = 0.25  # urllib3 sleeps 0, 0.5, 1.0 s between the tries
RETRY_AFTER_CAP_S = 30.0  # a longer Retry-After is the next sweep's business, not this call's
_TAGS = re.compile(r"<[^>]*>")


def is_transient_status(status: int) -> bool:
    """5xx and 429 are worth retrying later; other 4xx are an answer."""
    return status >= 500 or status == 429


class IdempotentRetry(Retry):
    """urllib3's `Retry` for GET/HEAD only; any other call fails on its first error.

    `allowed_methods` alone does not stop urllib3 from repeating a POST after a refused or
    timed-out connection; this does, so a status PUT or a prepare POST is never sent twice.
    A `Retry-After` longer than `RETRY_AFTER_CAP_S` is shortened to the cap.
    """

    def increment(self, method: str | None = None, url: str | None = None, *args: Any,
                  **kwargs: Any) -> Retry:
        if method is not None and method.upper() not in IDEMPOTENT:
            return Retry(0, raise_on_status=False).increment(method, url, *args, **kwargs)
        return super().increment(method, url, *args, **kwargs)

    def get_retry_after(self, response: Any) -> float | None:
        seconds = super().get_retry_after(response)
        return None if seconds is None else min(seconds, RETRY_AFTER_CAP_S)


def retry_policy() -> IdempotentRetry:
    return IdempotentRetry(total=RETRY_TOTAL, backoff_factor=RETRY_BACKOFF_S,
                           status_forcelist=RETRY_STATUSES, allowed_methods=IDEMPOTENT,
                           respect_retry_after_header=True, raise_on_status=False)


def new_session(verify: bool | str) -> requests.Session:
    s = requests.Session()
    s.verify = verify
    s.headers["User-Agent"] = "pollcat"
    adapter = HTTPAdapter(max_retries=retry_policy())
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s


def snippet(text: str, limit: int = 200) -> str:
    """A short, single-line, redacted excerpt of what a service said (tags of HTML removed)."""
    flat = " ".join(_TAGS.sub(" ", text).split())
    return redact(flat[:limit])


def error_from_response(service: str, resp: requests.Response) -> ServiceError:
    """The service's own code and message, in the transient or permanent family by status."""
    code = None
    message = snippet(resp.content.decode("utf-8", "replace"), 300) or resp.reason
    try:
        body = json.loads(resp.content.decode("utf-8"))
        if isinstance(body, dict):
            code = body.get("code") if isinstance(body.get("code"), str) else None
            if isinstance(body.get("message"), str) and body["message"]:
                message = redact(body["message"])
    except ValueError:  # not JSON (an HTML page from a proxy): the snippet is the message
        pass
    cls = TransientServiceError if is_transient_status(resp.status_code) \
        else PermanentServiceError
    return cls(str(message), service=service, status=resp.status_code, code=code)


def json_body(service: str, resp: requests.Response, shape: type = dict,
              keys: tuple[str, ...] = ()) -> Any:
    """The answer as JSON of the expected `shape` (with `keys`, for an object).

    Anything else (an HTML page with status 200, truncated JSON, bytes that are not UTF-8, an
    object without the fields the protocol promises) is a TransientServiceError that names
    the service and quotes the start of the answer.
    """
    try:
        body = json.loads(resp.content.decode("utf-8"))
    except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
        body = _Garbage
    if not isinstance(body, shape) or (isinstance(body, dict) and
                                       any(k not in body for k in keys)):
        what = f"a JSON {shape.__name__}" + (f" with {', '.join(keys)}" if keys else "")
        raise TransientServiceError(
            f"{service} answered something that is not {what}: "
            f"{snippet(resp.content.decode('utf-8', 'replace'))!r}",
            service=service, status=resp.status_code)
    return body


class _Garbage:
    """Marks an answer that did not parse (no JSON value is an instance of it)."""


def request(http: requests.Session, service: str, method: str, url: str, *,
            timeout: float, **kwargs: Any) -> requests.Response:
    """One call; connection problems and 5xx are transient, 4xx permanent (callers refine)."""
    try:
        resp = http.request(method, url, timeout=timeout, **kwargs)
    except requests.RequestException as exc:
        # `from None`: urllib3's message and the chained exception quote the full URL
        raise TransientServiceError(f"cannot reach {service}: {snippet(str(exc), 300)}",
                                    service=service) from None
    if resp.status_code >= 400:
        raise error_from_response(service, resp)
    return resp
