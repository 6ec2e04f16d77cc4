"""Globus Auth, the two calls a confidential client needs: a client-credentials token and an
identity lookup.

`POST /v2/oauth2/token` takes HTTP Basic client credentials and `grant_type=client_credentials`
with space-separated scopes; it answers one token per resource server, the first at the top
level and the others in `other_tokens` (the shape `OAuthTokenResponse.by_resource_server`
reads). `GET /v2/api/identities?usernames=a,b&provision=true` (or `ids=`) answers
`{"identities": [...]}` with only the identities found: an unknown username is simply absent.
It accepts a Bearer token for `auth.globus.org` or Basic client credentials.

Not emulated (inferred unnecessary for pollcat): `id_token` (no OpenID configuration or JWKS is
served, so no `id_token` is issued even when `openid` is requested), refresh tokens, other grants.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import parse_qsl, unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from simfacility.globus.errors import AuthApiError, OAuthError
from simfacility.globus.state import (
    AUTH_RESOURCE_SERVER,
    AUTH_SCOPES,
    TOKEN_LIFETIME_S,
    TRANSFER_RESOURCE_SERVER,
    TRANSFER_SCOPE,
    GlobusState,
)

SCOPE_SERVERS = {TRANSFER_SCOPE: TRANSFER_RESOURCE_SERVER,
                 **{scope: AUTH_RESOURCE_SERVER for scope in AUTH_SCOPES}}


def basic_credentials(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("basic "):
        return None
    try:
        raw = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, secret = raw.partition(":")
    if not sep:
        return None
    return unquote(client_id), unquote(secret)


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return None


def build(state: GlobusState) -> Starlette:
    async def token(request: Request) -> JSONResponse:
        creds = basic_credentials(request)
        if creds is None or not state.client_secret_ok(*creds):
            return OAuthError(401, "invalid_client", "Unknown client or wrong secret").response()
        form = dict(parse_qsl((await request.body()).decode("utf-8")))
        if form.get("grant_type") != "client_credentials":
            return OAuthError(400, "unsupported_grant_type",
                              f"grant_type {form.get('grant_type')!r} is not supported").response()
        scopes = form.get("scope", "").split()
        unknown = [s for s in scopes if s not in SCOPE_SERVERS]
        if not scopes or unknown:
            return OAuthError(400, "invalid_scope",
                              f"Unknown scopes: {' '.join(unknown) or '(none)'}").response()
        by_server: dict[str, list[str]] = {}
        for scope in scopes:
            by_server.setdefault(SCOPE_SERVERS[scope], []).append(scope)
        tokens = []
        for server, server_scopes in by_server.items():
            access = state.issue_token(creds[0], server, frozenset(server_scopes))
            tokens.append({"access_token": access, "scope": " ".join(server_scopes),
                           "resource_server": server, "expires_in": TOKEN_LIFETIME_S,
                           "token_type": "Bearer"})
        body = dict(tokens[0])
        body["other_tokens"] = tokens[1:]
        return JSONResponse(body)

    async def identities(request: Request) -> JSONResponse:
        if not _authorized_for_auth(state, request):
            return AuthApiError(401, "UNAUTHORIZED", "Call must be authenticated",
                                "Unauthorized").response()
        usernames = request.query_params.get("usernames")
        ids = request.query_params.get("ids")
        if (usernames is None) == (ids is None):
            return AuthApiError(400, "INVALID_PARAMETERS",
                                "Exactly one of usernames or ids is required",
                                "Invalid Parameters").response()
        provision = request.query_params.get("provision", "false").lower() == "true"
        if usernames is not None:
            found = state.lookup_usernames(_split(usernames), provision)
        else:
            found = state.lookup_ids(_split(ids or ""))
        return JSONResponse({"identities": [i.document() for i in found]})

    return Starlette(routes=[
        Route("/v2/oauth2/token", token, methods=["POST"]),
        Route("/v2/api/identities", identities, methods=["GET"]),
    ])


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _authorized_for_auth(state: GlobusState, request: Request) -> bool:
    creds = basic_credentials(request)
    if creds is not None:
        return state.client_secret_ok(*creds)
    token = bearer_token(request)
    info = state.token_info(token) if token else None
    return info is not None and info.resource_server == AUTH_RESOURCE_SERVER
