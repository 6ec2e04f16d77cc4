"""Globus Transfer's guest-collection permission API (`/v0.10/endpoint/{id}/access...`).

- `GET  /v0.10/endpoint/{id}/access_list` -> `{"DATA_TYPE": "access_list", "endpoint", "length",
  "DATA": [access, ...]}`, the implicit role rules included (with `role_id`, `id` null).
- `POST /v0.10/endpoint/{id}/access` -> 201 `{"DATA_TYPE": "access_create_result",
  "code": "Created", "access_id", "message", "request_id", "resource"}`.
- `GET|PUT|DELETE /v0.10/endpoint/{id}/access/{rule_id}` -> the access document, or a `result`
  document with code `Updated` / `Deleted`.

Errors use Transfer's document: 401 `AuthenticationFailed`, 404 `EndpointNotFound` (unknown
collection), 404 `AccessRuleNotFound` (a rule id the collection does not hold: never created,
deleted, or dropped at its `expiration_date`; Globus documents this code for a DELETE of a rule
that is already deleted, so a client retrying a DELETE whose answer was lost must accept it as
success), 403 `PermissionDenied` (no managing role), 400 `BadRequest` (malformed access
document), 409 `Exists` (same principal and path), 409 `LimitExceeded` (the collection's
permission limit).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from simfacility.globus.auth_api import bearer_token
from simfacility.globus.errors import TransferError, request_id
from simfacility.globus.state import (
    MANAGING_ROLES,
    TRANSFER_RESOURCE_SERVER,
    VIEWING_ROLES,
    Collection,
    GlobusState,
    iso,
    parse_iso,
    utcnow,
)

PRINCIPAL_TYPES = frozenset({"identity", "group", "all_authenticated_users", "anonymous"})
PERMISSIONS = frozenset({"r", "rw"})
UPDATABLE = frozenset({"permissions", "expiration_date", "DATA_TYPE"})


class AccessControl:
    """The permission rules of every collection, checked against the caller's role."""

    def __init__(self, state: GlobusState):
        self.state = state

    def _collection(self, collection_id: str, caller: str, roles: frozenset) -> Collection:
        coll = self.state.collections.get(collection_id)
        if coll is None:
            raise TransferError(404, "EndpointNotFound",
                                f"No such endpoint or collection: '{collection_id}'")
        if coll.role_of(caller) not in roles:
            raise TransferError(403, "PermissionDenied",
                                f"You do not have permission to manage access rules on "
                                f"'{collection_id}'")
        coll.drop_expired(utcnow())
        return coll

    def list(self, collection_id: str, caller: str) -> list[dict[str, Any]]:
        with self.state.lock:
            coll = self._collection(collection_id, caller, VIEWING_ROLES)
            return coll.implicit_rules() + [dict(r) for r in coll.rules.values()]

    def get(self, collection_id: str, caller: str, rule_id: str) -> dict[str, Any]:
        with self.state.lock:
            coll = self._collection(collection_id, caller, VIEWING_ROLES)
            return dict(self._rule(coll, rule_id))

    def create(self, collection_id: str, caller: str, doc: dict[str, Any]) -> str:
        with self.state.lock:
            coll = self._collection(collection_id, caller, MANAGING_ROLES)
            rule = self._validated(doc)
            for existing in coll.rules.values():
                if (existing["principal_type"], existing["principal"], existing["path"]) == (
                        rule["principal_type"], rule["principal"], rule["path"]):
                    raise TransferError(409, "Exists",
                                        f"Access rule already exists for principal "
                                        f"'{rule['principal']}' on path '{rule['path']}'")
            if len(coll.rules) >= coll.rule_limit:
                raise TransferError(409, "LimitExceeded",
                                    f"Endpoint ACL already has the maximum number of access "
                                    f"rules ({coll.rule_limit})")
            rule_id = str(uuid.uuid4())
            rule.update({"DATA_TYPE": "access", "id": rule_id, "role_id": None,
                         "role_type": None, "create_time": iso(utcnow())})
            coll.rules[rule_id] = rule
            if rule.get("notify_email"):
                self.state.notifications.append({"to": rule["notify_email"],
                                                 "collection": collection_id,
                                                 "path": rule["path"],
                                                 "message": rule.get("notify_message")})
            return rule_id

    def update(self, collection_id: str, caller: str, rule_id: str,
               doc: dict[str, Any]) -> None:
        with self.state.lock:
            coll = self._collection(collection_id, caller, MANAGING_ROLES)
            rule = self._rule(coll, rule_id)
            extra = set(doc) - UPDATABLE
            if extra:
                raise TransferError(400, "BadRequest",
                                    f"Fields cannot be updated: {', '.join(sorted(extra))}")
            if "permissions" in doc:
                rule["permissions"] = self._permissions(doc["permissions"])
            if "expiration_date" in doc:
                rule["expiration_date"] = self._expiration(doc["expiration_date"])

    def delete(self, collection_id: str, caller: str, rule_id: str) -> None:
        with self.state.lock:
            coll = self._collection(collection_id, caller, VIEWING_ROLES)
            self._rule(coll, rule_id)
            del coll.rules[rule_id]

    @staticmethod
    def _rule(coll: Collection, rule_id: str) -> dict[str, Any]:
        rule = coll.rules.get(rule_id)
        if rule is None:
            raise TransferError(404, "AccessRuleNotFound",
                                f"Access rule '{rule_id}' not found")
        return rule

    def _validated(self, doc: dict[str, Any]) -> dict[str, Any]:
        if doc.get("DATA_TYPE", "access") != "access":
            raise TransferError(400, "BadRequest", "DATA_TYPE must be 'access'")
        principal_type = doc.get("principal_type")
        if principal_type not in PRINCIPAL_TYPES:
            raise TransferError(400, "BadRequest", f"Invalid principal_type {principal_type!r}")
        principal = doc.get("principal") or ""
        if principal_type == "identity" and principal not in self.state.identities:
            raise TransferError(400, "BadRequest", f"Invalid identity '{principal}'")
        path = doc.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            raise TransferError(400, "BadRequest", f"Invalid path {path!r}: must be absolute")
        return {"principal_type": principal_type, "principal": principal, "path": path,
                "permissions": self._permissions(doc.get("permissions")),
                "expiration_date": self._expiration(doc.get("expiration_date")),
                "notify_email": doc.get("notify_email"),
                "notify_message": doc.get("notify_message")}

    @staticmethod
    def _permissions(value: Any) -> str:
        if value not in PERMISSIONS:
            raise TransferError(400, "BadRequest", f"Invalid permissions {value!r}")
        return value

    @staticmethod
    def _expiration(value: Any) -> str | None:
        if value is None:
            return None
        try:
            when = parse_iso(str(value))
        except ValueError as exc:
            raise TransferError(400, "BadRequest",
                                f"Invalid expiration_date {value!r}") from exc
        if when <= utcnow():
            raise TransferError(400, "BadRequest", "expiration_date must be in the future")
        return iso(when.astimezone(dt.UTC))


def build(state: GlobusState) -> Starlette:
    acl = AccessControl(state)

    def caller_of(request: Request) -> str:
        token = bearer_token(request)
        info = state.token_info(token) if token else None
        if info is None or info.resource_server != TRANSFER_RESOURCE_SERVER:
            raise TransferError(401, "AuthenticationFailed",
                                "No valid Transfer access token was presented")
        return info.client_id

    async def body_of(request: Request) -> dict[str, Any]:
        try:
            doc = await request.json()
        except ValueError as exc:
            raise TransferError(400, "BadRequest", "Could not parse JSON") from exc
        if not isinstance(doc, dict):
            raise TransferError(400, "BadRequest", "Expected a JSON object")
        return doc

    async def access_list(request: Request) -> JSONResponse:
        coll_id = request.path_params["collection"]
        try:
            rules = acl.list(coll_id, caller_of(request))
        except TransferError as err:
            return err.response(request.url.path)
        return JSONResponse({"DATA_TYPE": "access_list", "endpoint": coll_id,
                             "length": len(rules), "DATA": rules})

    async def access_create(request: Request) -> JSONResponse:
        coll_id = request.path_params["collection"]
        resource = f"/endpoint/{coll_id}/access"
        try:
            rule_id = acl.create(coll_id, caller_of(request), await body_of(request))
        except TransferError as err:
            return err.response(resource)
        return JSONResponse({"DATA_TYPE": "access_create_result", "code": "Created",
                             "resource": resource, "request_id": request_id(),
                             "access_id": rule_id,
                             "message": "Access rule created successfully."}, status_code=201)

    async def access_rule(request: Request) -> JSONResponse:
        coll_id = request.path_params["collection"]
        rule_id = request.path_params["rule_id"]
        resource = f"/endpoint/{coll_id}/access/{rule_id}"
        try:
            caller = caller_of(request)
            if request.method == "GET":
                return JSONResponse(acl.get(coll_id, caller, rule_id))
            if request.method == "PUT":
                acl.update(coll_id, caller, rule_id, await body_of(request))
                code, verb = "Updated", "updated"
            else:
                acl.delete(coll_id, caller, rule_id)
                code, verb = "Deleted", "deleted"
        except TransferError as err:
            return err.response(resource)
        return JSONResponse({"DATA_TYPE": "result", "code": code, "resource": resource,
                             "request_id": request_id(),
                             "message": f"Access rule '{rule_id}' {verb} successfully"})

    return Starlette(routes=[
        Route("/v0.10/endpoint/{collection}/access_list", access_list, methods=["GET"]),
        Route("/v0.10/endpoint/{collection}/access", access_create, methods=["POST"]),
        Route("/v0.10/endpoint/{collection}/access/{rule_id}", access_rule,
              methods=["GET", "PUT", "DELETE"]),
    ])
