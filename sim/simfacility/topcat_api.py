"""TopCAT's REST API (`/topcat/...`): 2.4.9 plus the datagateway-download-api calls pollcat uses.

Wire reference §2.2-§2.5 and §2.9. Parameters go where JAX-RS reads them: query parameters for
GET and DELETE, `application/x-www-form-urlencoded` fields for PUT and POST. Errors are TopCAT's
`{"status","code","message"}`; a JAX-RS 404 (unknown path, or a non-numeric `{id}`) is
`NotFoundException`, a wrong method is 405 with `code` = the exception message, and any other
failure is 500 `InternalException` `"<class> <message>"` as `GenericExceptionMapper` writes it.

Handlers do their blocking work (HTTP calls to ICAT and the IDS) on TopCAT's own executor, so
the server's event loop keeps serving the ICAT and IDS requests TopCAT is waiting for.

Choices (inferred): `isValidSession` answers whether the session is an *admin* session (which
is what AdminResource computes); a missing `queryOffset` returns every download in id order; a
user's downloads are not filtered by facility (the JPQL has only the userName condition).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from simfacility.errors import TopcatError
from simfacility.topcat_query import QueryError, parse, parse_query_offset, split_query_offset

if TYPE_CHECKING:
    from simfacility.facility import SimFacility
    from simfacility.topcat_state import TopcatState

log = logging.getLogger("simfacility.topcat")

Params = dict[str, str]
Logic = Callable[[Params], Any]


async def _params(request: Request) -> Params:
    """Query parameters, plus form fields for bodies (first value wins, blanks kept)."""
    params = dict(parse_qsl(request.url.query, keep_blank_values=True))
    if request.method in ("POST", "PUT"):
        ctype = request.headers.get("content-type", "")
        if "application/x-www-form-urlencoded" in ctype:
            body = (await request.body()).decode("utf-8", "replace")
            for key, value in parse_qsl(body, keep_blank_values=True):
                params.setdefault(key, value)
    params.update({k: str(v) for k, v in request.path_params.items()})
    return params


def _respond(result: Any) -> Response:
    if result is None:
        return Response(status_code=200)
    return JSONResponse(result)


def _internal(exc: Exception) -> TopcatError:
    return TopcatError("InternalException", f"{type(exc).__name__} {exc}", 500)


def _endpoint(state: TopcatState, logic: Logic) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a blocking `logic(params)` as an async handler with TopCAT's error mapping."""

    async def handler(request: Request) -> Response:
        try:
            params = await _params(request)
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(state.executor,
                                                functools.partial(logic, params))
        except TopcatError as exc:
            return exc.response()
        except QueryError as exc:
            return TopcatError("InternalException",
                               "java.lang.IllegalArgumentException An exception occurred while "
                               f"creating a query in EntityManager: {exc}", 500).response()
        except Exception as exc:  # GenericExceptionMapper: any RuntimeException -> 500
            log.exception("TopCAT handler failed")
            return _internal(exc).response()
        return _respond(result)

    return handler


def _user_query(query_offset: str | None):
    """GET /user/downloads: `userName = :user AND (<queryOffset>)`; no `)` allowed."""
    if query_offset is None:
        return parse_query_offset(None)
    fragment, offset, count = split_query_offset(query_offset)
    if ")" in fragment:
        raise TopcatError("BadRequestException",
                          "downloads queryOffset contains illegal characters")
    query = parse(fragment)
    query.offset, query.count = offset, count
    return query


def _admin_routes(state: TopcatState) -> list[tuple[str, str, Logic]]:
    def admin(p: Params) -> None:
        state.require_admin(p.get("facilityName"), p.get("sessionId"))

    def is_valid_session(p: Params) -> bool:
        return state.is_admin(p.get("facilityName"), p.get("sessionId"))

    def downloads(p: Params) -> list:
        admin(p)
        return state.query(parse_query_offset(p.get("queryOffset")))

    def status(p: Params) -> None:
        admin(p)
        state.set_status(int(p["id"]), p.get("value"), session_id=p.get("sessionId"),
                         custom_value=p.get("customValue"), admin=True)

    def deleted(p: Params) -> None:
        admin(p)
        state.set_deleted(int(p["id"]), p.get("value"))

    def prepare(p: Params) -> None:
        admin(p)
        state.admin_prepare(int(p["id"]), p.get("sessionId") or "")

    return [
        ("GET", "/admin/isValidSession", is_valid_session),
        ("GET", "/admin/downloads", downloads),
        ("PUT", "/admin/download/{id:int}/status", status),
        ("PUT", "/admin/download/{id:int}/isDeleted", deleted),
        ("PUT", "/admin/download/{id:int}/prepare", prepare),
    ]


def _user_routes(state: TopcatState) -> list[tuple[str, str, Logic]]:
    def user(p: Params, method: str) -> str:
        state.check_facility(p.get("facilityName"), f"UserResource.{method}")
        return state.user_name(p.get("sessionId"))

    def downloads(p: Params) -> list:
        name = user(p, "getDownloads")
        return state.query(_user_query(p.get("queryOffset")), user_name=name)

    def status(p: Params) -> None:
        state.owned(int(p["id"]), user(p, "setDownloadStatus"))
        state.set_status(int(p["id"]), p.get("value"))

    def deleted(p: Params) -> None:
        state.owned(int(p["id"]), user(p, "deleteDownload"))
        state.set_deleted(int(p["id"]), p.get("value"))

    def cart_facility(p: Params) -> str:
        state.check_facility(p["facilityName"], "UserResource.getCart")
        return p["facilityName"]

    def get_cart(p: Params) -> dict:
        facility = cart_facility(p)
        return state.cart_json(facility, state.user_name(p.get("sessionId")))

    def add_items(p: Params) -> dict:
        facility = cart_facility(p)
        if (p.get("remove") or "").lower() == "true":
            return state.remove_cart_items(facility, p.get("sessionId") or "", p.get("items"))
        return state.add_cart_items(facility, p.get("sessionId") or "", p.get("items") or "")

    def remove_items(p: Params) -> dict:
        return state.remove_cart_items(cart_facility(p), p.get("sessionId") or "",
                                       p.get("items"))

    def submit(p: Params) -> dict:
        return state.submit(cart_facility(p), p.get("sessionId") or "", p.get("transport"),
                            p.get("fileName"), p.get("email"))

    return [
        ("GET", "/user/downloads", downloads),
        ("PUT", "/user/download/{id:int}/status", status),
        ("PUT", "/user/download/{id:int}/isDeleted", deleted),
        ("GET", "/user/cart/{facilityName}", get_cart),
        ("POST", "/user/cart/{facilityName}/cartItems", add_items),
        ("DELETE", "/user/cart/{facilityName}/cartItems", remove_items),
        ("POST", "/user/cart/{facilityName}/submit", submit),
    ]


def _general_routes(fac: SimFacility) -> list[tuple[str, str, Logic]]:
    return [
        ("GET", "/ping", lambda p: "ok"),
        ("GET", "/version", lambda p: fac.config.topcat.version),
    ]


async def _http_error(request: Request, exc: Exception) -> Response:
    """JAX-RS WebApplicationExceptions through TopCAT's GenericExceptionMapper."""
    status = getattr(exc, "status_code", 500)
    if status == 404:
        return TopcatError("NotFoundException", "HTTP 404 Not Found", 404).response()
    if status == 405:
        message = "HTTP 405 Method Not Allowed"
        return JSONResponse({"status": 405, "code": message, "message": message},
                            status_code=405)
    return _internal(exc).response()


def build(fac: SimFacility) -> Starlette:
    state = fac.topcat
    table = _admin_routes(state) + _user_routes(state) + _general_routes(fac)
    by_path: dict[str, dict[str, Logic]] = {}
    for method, path, logic in table:
        by_path.setdefault(path, {})[method] = logic
    routes = []
    for path, methods in by_path.items():
        routes.append(Route(path, _dispatch(state, methods), methods=list(methods)))
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error})


def _dispatch(state: TopcatState, methods: dict[str, Logic]):
    handlers = {m: _endpoint(state, logic) for m, logic in methods.items()}

    async def handler(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return handler
