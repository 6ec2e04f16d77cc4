"""The simulated ICAT server's REST API (icat.server 6.x `ICATRest`, mounted at `/icat`).

Served (wire reference §3.1-§3.3):

- `POST /session` (form field `json={"plugin":"simple","credentials":[{"username":..},
  {"password":..}]}`) -> `{"sessionId": "<lower-case uuid>"}`;
- `GET /session/{id}` -> `{"userName", "remainingMinutes"}`; `PUT` refreshes, `DELETE` logs out
  (both 204 with no body);
- `GET /version`, `GET /properties`, `GET /user/{name}`, `GET /user/{mnemonic}/{name}`;
- `GET /entityManager?sessionId&query[&id]`: search (a JSON array) or get (one object); the
  query language is documented in `simfacility.jpql`.

Choices where the reference says (inferred) or real ICAT depends on its deployment:

- Authentication: one authenticator, mnemonic `simple` (friendly name "Simple"), like
  authn.simple with ICAT prefixing the mnemonic: the credential `username` is the bare name
  (`alice`) and the ICAT user name becomes `simple/alice`, which must be a scenario user. Sending
  `simple/alice` as the username therefore fails, as it would against a real deployment. Wrong
  password or unknown user -> 403 SESSION `The username and password do not match`; a missing
  username/password -> 403 SESSION `username cannot be null or empty.` (authn.simple's wording).
  A malformed `json` field -> 400 BAD_PARAMETER.
- A missing or empty `sessionId` -> 403 SESSION `Session Id cannot be null or empty.` (as
  EntityBeanManager.getSession). For entityManager a missing query is checked first (400
  `query is not set`), as ICATRest does.
- A non-integer `id` -> 400 BAD_PARAMETER (real JAX-RS would answer an HTML 404).
- get: absent (or deleted) -> 404 NO_SUCH_OBJECT_FOUND `Datafile[id:N] not found.`; unreadable ->
  403 INSUFFICIENT_PRIVILEGES `READ access to this Datafile is not allowed.` (icat.server text).
- Entity JSON: `id, createId, createTime, modId, modTime`, then non-null attributes, then
  INCLUDEd relations (many-to-one nested bare, one-to-many as arrays of bare objects, unreadable
  related objects left out). createId/modId are `simple/root`; createTime/modTime the time the
  scenario was loaded, in ICAT's `yyyy-MM-dd'T'HH:mm:ss.SSSXXX`. In a multi-item select an
  entity item is written wrapped, `{"Dataset":{...}}`, without relations (inferred).
- maxEntities: see `simfacility.jpql`; entity results count INCLUDEd entities too and exceeding
  gives 412 VALIDATION `attempt to return more than N entities` (the spelling since
  icat.server 4.10.0; older servers wrote `entitities`).
- `POST`/`DELETE /entityManager` (writes) are not simulated: 501 NOT_IMPLEMENTED.
- `GET /properties`: `containerType` is `Glassfish`; `lifetimeMinutes` and `maxEntities` come
  from the scenario.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from simfacility import jpql
from simfacility.errors import IcatError
from simfacility.model import icat_time

log = logging.getLogger("simfacility.icat")

MNEMONIC = "simple"
AUTHENTICATORS = [{"mnemonic": MNEMONIC,
                   "keys": [{"name": "username"}, {"name": "password", "hide": True}],
                   "friendly": "Simple"}]

Handler = Callable[[Request], Awaitable[Response]]


def icat_errors(fn: Handler) -> Handler:
    """Turn IcatError (and anything unexpected) into ICAT's `{code, message[, offset]}` JSON."""
    @functools.wraps(fn)
    async def wrapper(request: Request) -> Response:
        try:
            return await fn(request)
        except IcatError as err:
            return err.response()
        except Exception as exc:  # a simulator bug must still look like an ICAT error
            log.exception("internal error in simulated ICAT")
            return IcatError("INTERNAL", f"{type(exc).__name__} {exc}").response()
    return wrapper


async def form_fields(request: Request) -> dict[str, str]:
    """URL-encoded form body (no python-multipart needed); query parameters as a fallback."""
    fields = dict(request.query_params)
    body = (await request.body()).decode("utf-8", errors="replace")
    fields.update(parse_qsl(body, keep_blank_values=True))
    return fields


def session_user(fac: Any, sid: str | None) -> str:
    if not sid:
        raise IcatError("SESSION", "Session Id cannot be null or empty.")
    return fac.sessions.user_of(sid)


# ---------------------------------------------------------------------------------------------
# login
# ---------------------------------------------------------------------------------------------

def parse_login(raw: str | None) -> tuple[str, dict[str, str]]:
    """The plugin mnemonic and credentials from the `json` form field."""
    if raw is None:
        raise IcatError("BAD_PARAMETER", "json must not be null")
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise IcatError("BAD_PARAMETER", f"{exc} in json {raw}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("plugin"), str):
        raise IcatError("BAD_PARAMETER", "json must be an object with a string 'plugin'")
    creds: dict[str, str] = {}
    for entry in doc.get("credentials") or []:
        if not isinstance(entry, dict):
            raise IcatError("BAD_PARAMETER", "credentials must be an array of objects")
        creds.update({str(k): str(v) for k, v in entry.items()})
    return doc["plugin"], creds


def authenticate(fac: Any, plugin: str, creds: dict[str, str]) -> str:
    """authn.simple's checks, then ICAT's mnemonic prefix: returns the ICAT user name."""
    if plugin != MNEMONIC:
        raise IcatError("SESSION", f"Authenticator mnemonic {plugin} not recognised")
    username, password = creds.get("username"), creds.get("password")
    if not username:
        raise IcatError("SESSION", "username cannot be null or empty.")
    if not password:
        raise IcatError("SESSION", "password cannot be null or empty.")
    user = fac.store.users.get(f"{MNEMONIC}/{username}")
    if user is None or user.password != password:
        raise IcatError("SESSION", "The username and password do not match")
    return user.name


def logged_in(fac: Any, user_name: str) -> bool:
    """Whether the user holds a live session (Sessions has no public query for this)."""
    sessions = fac.sessions
    now = sessions.clock()
    with sessions._lock:
        return any(s.user_name == user_name and s.expires_at > now
                   for s in sessions._sessions.values())


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------

def jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return icat_time(value)
    return value


class Renderer:
    """Entity JSON as icat.server's jsonise writes it, counting entities for maxEntities."""

    def __init__(self, cat: jpql.Catalog, max_entities: int):
        self.cat = cat
        self.max_entities = max_entities
        self.count = 0

    def entity(self, entity: str, obj: Any, includes: dict[str, Any]) -> dict[str, Any]:
        self.count += 1
        if self.count > self.max_entities:
            raise IcatError("VALIDATION",
                            f"attempt to return more than {self.max_entities} entities")
        cat = self.cat
        out = {name: jsonable(cat.attr(entity, obj, name)) for name in jpql.BASE_FIELDS}
        for name in jpql.SCHEMA[entity].attrs:
            value = cat.attr(entity, obj, name)
            if value is not None:
                out[name] = jsonable(value)
        for rel_name, sub in includes.items():
            rel = jpql.SCHEMA[entity].rels[rel_name]
            related = cat.follow(entity, obj, rel_name)
            if rel.many:
                out[rel_name] = [self.entity(rel.target, r, sub) for r in related
                                 if cat.readable(rel.target, r)]
            elif related is not None and cat.readable(rel.target, related):
                out[rel_name] = self.entity(rel.target, related, sub)
        return out

    def wrapped(self, obj: Any, includes: dict[str, Any]) -> dict[str, Any] | None:
        if obj is None:
            return None
        name = self.cat.entity_of(obj)
        return {name: self.entity(name, obj, includes)}

    def value(self, v: Any) -> Any:
        if isinstance(v, str | int | float | bool) or v is None:
            return v
        if isinstance(v, datetime):
            return icat_time(v)
        return self.wrapped(v, {})

    def result(self, res: jpql.Result) -> list[Any]:
        if res.kind == "entity":
            return [self.wrapped(o, res.includes) for o in res.rows]
        if res.kind == "value":
            return [self.value(v) for v in res.rows]
        return [[self.value(v) for v in row] for row in res.rows]


# ---------------------------------------------------------------------------------------------
# entityManager
# ---------------------------------------------------------------------------------------------

def entity_manager(fac: Any, params: dict[str, str]) -> Any:
    """Search or get: the JSON document to send (runs in a worker thread)."""
    query = params.get("query")
    if query is None:
        raise IcatError("BAD_PARAMETER", "query is not set")
    user = session_user(fac, params.get("sessionId"))
    max_entities = fac.config.max_entities
    raw_id = params.get("id")
    with fac.store.lock:  # one consistent view while evaluating and rendering
        if raw_id is None:
            res, cat = jpql.search(fac.store, user, query, max_entities)
            return Renderer(cat, max_entities).result(res)
        try:
            ident = int(raw_id)
        except ValueError:
            raise IcatError("BAD_PARAMETER", f"id must be an integer, not {raw_id!r}") from None
        res, cat = jpql.get(fac.store, user, query, ident)
        return Renderer(cat, max_entities).result(res)[0]


def build(fac: Any) -> Starlette:
    """The `/icat` application for one simulated facility."""

    @icat_errors
    async def login(request: Request) -> Response:
        plugin, creds = parse_login((await form_fields(request)).get("json"))
        user = authenticate(fac, plugin, creds)
        return JSONResponse({"sessionId": fac.sessions.login(user)})

    @icat_errors
    async def session(request: Request) -> Response:
        sid = request.path_params["sid"]
        if request.method == "GET":
            user = fac.sessions.user_of(sid)
            return JSONResponse({"userName": user,
                                 "remainingMinutes": fac.sessions.remaining_minutes(sid)})
        if request.method == "PUT":
            fac.sessions.refresh(sid)
        else:
            fac.sessions.logout(sid)
        return Response(status_code=204)

    @icat_errors
    async def version(request: Request) -> Response:
        return JSONResponse({"version": fac.config.icat_version})

    @icat_errors
    async def properties(request: Request) -> Response:
        lifetime = fac.config.session_lifetime_minutes
        return JSONResponse({
            "maxEntities": fac.config.max_entities,
            "lifetimeMinutes": int(lifetime) if float(lifetime).is_integer() else lifetime,
            "authenticators": AUTHENTICATORS,
            "containerType": "Glassfish",
        })

    @icat_errors
    async def user(request: Request) -> Response:
        p = request.path_params
        name = f"{p['mnemonic']}/{p['name']}" if "mnemonic" in p else p["name"]
        return JSONResponse({"loggedIn": logged_in(fac, name)})

    @icat_errors
    async def entity_manager_route(request: Request) -> Response:
        if request.method != "GET":
            raise IcatError("NOT_IMPLEMENTED",
                            "writing through entityManager is not supported by the simulated ICAT")
        doc = await run_in_threadpool(entity_manager, fac, dict(request.query_params))
        return JSONResponse(doc)

    return Starlette(routes=[
        Route("/session", login, methods=["POST"]),
        Route("/session/{sid}", session, methods=["GET", "PUT", "DELETE"]),
        Route("/version", version, methods=["GET"]),
        Route("/properties", properties, methods=["GET"]),
        Route("/user/{name}", user, methods=["GET"]),
        Route("/user/{mnemonic}/{name}", user, methods=["GET"]),
        Route("/entityManager", entity_manager_route, methods=["GET", "POST", "DELETE"]),
    ])
