"""The front end's request-line limit (Apache httpd `LimitRequestLine`, default 8190 bytes).

Real facilities put ICAT, the IDS and TopCAT behind Apache or nginx, and Payara's own Grizzly
listener caps the request head at 8 KiB as well, so a GET whose URL carries a long id list is
refused before any service sees it (sim-fidelity audit row 7, inferred and deployment-specific).
The answer is Apache's: 414 with a small HTML page, not any service's JSON. `/sim` is exempt.
"""

from __future__ import annotations

from typing import Any

BODY = (b"<!DOCTYPE HTML PUBLIC \"-//IETF//DTD HTML 2.0//EN\">\n<html><head>\n"
        b"<title>414 Request-URI Too Long</title>\n</head><body>\n<h1>Request-URI Too Long</h1>\n"
        b"<p>The requested URL's length exceeds the capacity\nlimit for this server.<br />\n"
        b"</p>\n</body></html>\n")


def request_line_length(scope: dict[str, Any]) -> int:
    """Bytes of `METHOD SP request-target SP HTTP/x.y` as the client sent them."""
    target = scope.get("raw_path") or scope.get("path", "").encode("utf-8")
    query = scope.get("query_string") or b""
    if query:
        target = target + b"?" + query
    version = scope.get("http_version", "1.1")
    return len(scope.get("method", "GET")) + 1 + len(target) + len(" HTTP/") + len(version)


class RequestLineLimit:
    """ASGI middleware answering 414 when the request line is longer than `limit` bytes."""

    def __init__(self, app: Any, limit: int | None):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if (scope["type"] == "http" and self.limit is not None
                and not scope.get("path", "").startswith("/sim/")
                and request_line_length(scope) > self.limit):
            await send({"type": "http.response.start", "status": 414,
                        "headers": [(b"content-type", b"text/html; charset=iso-8859-1"),
                                    (b"content-length", str(len(BODY)).encode())]})
            await send({"type": "http.response.body", "body": BODY})
            return
        await self.app(scope, receive, send)
