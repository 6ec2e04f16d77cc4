"""Each service's own error shape.

The three Java services disagree on error JSON (wire reference §1.6, §2.2, §3.3), and clients
branch on those shapes, so every handler raises one of these and the app turns it into the
matching response.
"""

from __future__ import annotations

from starlette.responses import JSONResponse

ICAT_STATUS = {
    "BAD_PARAMETER": 400,
    "INTERNAL": 500,
    "INSUFFICIENT_PRIVILEGES": 403,
    "NO_SUCH_OBJECT_FOUND": 404,
    "OBJECT_ALREADY_EXISTS": 412,
    "SESSION": 403,
    "VALIDATION": 412,
    "NOT_IMPLEMENTED": 501,
}

IDS_STATUS = {
    "BadRequestException": 400,
    "InsufficientPrivilegesException": 403,
    "NotFoundException": 404,
    "DataNotOnlineException": 503,
    "InternalException": 500,
    "InsufficientStorageException": 500,
    "NotImplementedException": 501,
    "NOT_IMPLEMENTED": 501,
}

TOPCAT_STATUS = {
    "BadRequestException": 400,
    "AuthenticationException": 401,
    "ForbiddenException": 403,
    "NotFoundException": 404,
    "InternalException": 500,
    "IcatException": 500,
}


class ServiceError(Exception):
    """Base: an error a simulated service answers with its own JSON."""

    service = ""

    def __init__(self, code: str, message: str, status: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status if status is not None else self.default_status(code)

    @staticmethod
    def default_status(code: str) -> int:
        return 500

    def body(self) -> dict:
        return {"code": self.code, "message": self.message}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


class IcatError(ServiceError):
    """ICAT REST error: `{"code": <IcatExceptionType>, "message", "offset"?}`."""

    service = "icat"

    def __init__(self, code: str, message: str, offset: int | None = None):
        super().__init__(code, message, ICAT_STATUS.get(code, 500))
        self.offset = offset

    def body(self) -> dict:
        body = {"code": self.code, "message": self.message}
        if self.offset is not None:
            body["offset"] = self.offset
        return body


class IdsError(ServiceError):
    """IDS error: `{"code": <Java exception simple name>, "message"}`."""

    service = "ids"

    @staticmethod
    def default_status(code: str) -> int:
        return IDS_STATUS.get(code, 500)


class TopcatError(ServiceError):
    """TopCAT error: `{"status", "code", "message"}` with the same HTTP status."""

    service = "topcat"

    @staticmethod
    def default_status(code: str) -> int:
        return TOPCAT_STATUS.get(code, 500)

    def body(self) -> dict:
        return {"status": self.status, "code": self.code, "message": self.message}


_DEFAULT_CODES = {
    "icat": {400: "BAD_PARAMETER", 403: "INSUFFICIENT_PRIVILEGES", 404: "NO_SUCH_OBJECT_FOUND",
             501: "NOT_IMPLEMENTED"},
    "ids": {400: "BadRequestException", 403: "InsufficientPrivilegesException",
            404: "NotFoundException", 501: "NotImplementedException",
            503: "DataNotOnlineException"},
    "topcat": {400: "BadRequestException", 401: "AuthenticationException",
               403: "ForbiddenException", 404: "NotFoundException"},
}
_INTERNAL = {"icat": "INTERNAL", "ids": "InternalException", "topcat": "InternalException"}


def error_for(service: str, status: int, code: str | None, message: str) -> ServiceError:
    """Build the error a service would send for an injected fault."""
    code = code or _DEFAULT_CODES.get(service, {}).get(status) or _INTERNAL.get(service, "INTERNAL")
    if service == "icat":
        err: ServiceError = IcatError(code, message)
        err.status = status
        return err
    if service == "ids":
        return IdsError(code, message, status)
    return TopcatError(code, message, status)
