"""Globus's own error documents, which globus-sdk parses into `code`, `message`, `http_status`.

- Transfer: `{"code", "message", "request_id", "resource"}` with the HTTP status
  (for example 409 `Exists`, 409 `LimitExceeded`, 403 `PermissionDenied`,
  404 `AccessRuleNotFound`, 404 `EndpointNotFound`, 503 `ServiceUnavailable`).
- Auth API (`/v2/api/...`): a JSON:API-style `{"errors": [{"status", "id", "code", "detail",
  "title"}], "error", "error_description"}`, as `globus_sdk.testing`'s fixtures record it.
- Auth OAuth2 (`/v2/oauth2/token`): RFC 6749's `{"error", "error_description"}`.
"""

from __future__ import annotations

import secrets
import uuid

from starlette.responses import JSONResponse


def request_id() -> str:
    return secrets.token_urlsafe(6)


class TransferError(Exception):
    """An error the Transfer service answers with its `{code, message, ...}` document."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self, resource: str) -> JSONResponse:
        return JSONResponse({"code": self.code, "message": self.message,
                             "request_id": request_id(), "resource": resource},
                            status_code=self.status)


class AuthApiError(Exception):
    """An error Globus Auth's API answers with its `errors` array."""

    def __init__(self, status: int, code: str, detail: str, title: str = ""):
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title or code.replace("_", " ").title()

    def response(self) -> JSONResponse:
        return JSONResponse({"errors": [{"status": str(self.status), "id": str(uuid.uuid1()),
                                         "code": self.code, "detail": self.detail,
                                         "title": self.title}],
                             "error": self.code.lower(), "error_description": self.title},
                            status_code=self.status)


class OAuthError(Exception):
    """A token-endpoint error: `{"error": "invalid_client", "error_description": ...}`."""

    def __init__(self, status: int, error: str, description: str):
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.error, "error_description": self.description},
                            status_code=self.status)


INTERNAL_CODES = {500: "InternalError", 502: "BadGateway", 503: "ServiceUnavailable",
                  504: "GatewayTimeout", 429: "RateLimited"}


def injected_response(service: str, status: int, code: str | None, message: str,
                      resource: str) -> JSONResponse:
    """The document the named service would send for an injected failure."""
    code = code or INTERNAL_CODES.get(status, "InternalError")
    if service == "transfer":
        return TransferError(status, code, message).response(resource)
    return AuthApiError(status, code, message).response()
