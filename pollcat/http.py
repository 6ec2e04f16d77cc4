"""Shared `requests` plumbing for the JSON services (ICAT REST, TopCAT)."""

from __future__ import annotations

from typing import Any

import requests

from pollcat.errors import PermanentServiceError, ServiceError, TransientServiceError


def new_session(verify: bool | str) -> requests.Session:
    s = requests.Session()
    s.verify = verify
    s.headers["User-Agent"] = "pollcat"
    return s


def error_from_response(service: str, resp: requests.Response) -> ServiceError:
    """The service's own code and message, in the transient or permanent family by status."""
    code = None
    message = resp.text.strip()[:300] or resp.reason
    try:
        body = resp.json()
        if isinstance(body, dict):
            code = body.get("code")
            message = body.get("message") or message
    except ValueError:
        pass
    cls = TransientServiceError if resp.status_code >= 500 or resp.status_code == 429 \
        else PermanentServiceError
    return cls(str(message), service=service, status=resp.status_code, code=code)


def request(http: requests.Session, service: str, method: str, url: str, *,
            timeout: float, **kwargs: Any) -> requests.Response:
    """One call; connection problems and 5xx are transient, 4xx permanent (callers refine)."""
    try:
        resp = http.request(method, url, timeout=timeout, **kwargs)
    except requests.RequestException as exc:
        raise TransientServiceError(f"cannot reach {service}: {type(exc).__name__}",
                                    service=service) from exc
    if resp.status_code >= 400:
        raise error_from_response(service, resp)
    return resp
