"""Globus Auth, the two calls a confidential client needs: a client-credentials token and an
identity lookup.

`POST /v2/oauth2/token` takes HTTP Basic client credentials and `grant_type=client_credentials`
with space-separated scopes; it answers one token per resource server, the first at the top
level and the others in `other_tokens` (the shape `OAuthTokenResponse.by_resource_server`
reads). `GET /v2/api/identities?usernames=a,b&provision=true` (or `ids=`) answers
`{"identities": [...]}` with only the identities found: an unknown username is simply absent.
It accepts a Bearer token for `auth.globus.org` or Basic client credentials.

When `openid` is requested the token response carries an RS512-signed `id_token` whose `sub`
and `aud` are the client id, and `/.well-known/openid-configuration` and `/jwk.json` serve what
globus-sdk's `IDTokenDecoder` fetches to verify it (a v4 `ClientApp` decodes it to learn its
identity). Not emulated: refresh tokens and grants other than client credentials.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from urllib.parse import parse_qsl, unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from simfacility.globus.errors import AuthApiError, OAuthError
from simfacility.globus.state import (
    AUTH_RESOURCE_SERVER,
    AUTH_SCOPES,
    CLIENT_IDENTITY_DOMAIN,
    TOKEN_LIFETIME_S,
    TRANSFER_RESOURCE_SERVER,
    TRANSFER_SCOPE,
    GlobusState,
)

ID_TOKEN_ALG = "RS512"
KEY_ID = "sim-globus-auth"
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
        if "openid" in scopes:
            body["id_token"] = _id_token(state, creds[0], _issuer(request))
        return JSONResponse(body)

    async def openid_configuration(request: Request) -> JSONResponse:
        issuer = _issuer(request)
        return JSONResponse({"issuer": issuer, "jwks_uri": f"{issuer}/jwk.json",
                             "token_endpoint": f"{issuer}/v2/oauth2/token",
                             "id_token_signing_alg_values_supported": [ID_TOKEN_ALG],
                             "subject_types_supported": ["public"],
                             "grant_types_supported": ["client_credentials"]})

    async def jwk(request: Request) -> JSONResponse:
        from jwt.algorithms import RSAAlgorithm

        key = json.loads(RSAAlgorithm.to_jwk(state.signing_key().public_key()))
        key.update({"alg": ID_TOKEN_ALG, "use": "sig", "kid": KEY_ID})
        return JSONResponse({"keys": [key]})

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
        Route("/.well-known/openid-configuration", openid_configuration, methods=["GET"]),
        Route("/jwk.json", jwk, methods=["GET"]),
    ])


def _issuer(request: Request) -> str:
    """This Auth's own base URL (with any mount prefix), as Globus's `iss` is its own."""
    root = request.scope.get("root_path", "")  # the mount prefix(es), e.g. "/globus/auth"
    return f"{request.url.scheme}://{request.url.netloc}{root}".rstrip("/")


def _id_token(state: GlobusState, client_id: str, issuer: str) -> str:
    import jwt

    now = int(time.time())
    claims = {"iss": issuer, "sub": client_id, "aud": client_id, "iat": now,
              "exp": now + TOKEN_LIFETIME_S, "preferred_username": f"{client_id}@"
              f"{CLIENT_IDENTITY_DOMAIN}", "name": f"client {client_id}"}
    return jwt.encode(claims, state.signing_key(), algorithm=ID_TOKEN_ALG,
                      headers={"kid": KEY_ID})


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _authorized_for_auth(state: GlobusState, request: Request) -> bool:
    creds = basic_credentials(request)
    if creds is not None:
        return state.client_secret_ok(*creds)
    token = bearer_token(request)
    info = state.token_info(token) if token else None
    return info is not None and info.resource_server == AUTH_RESOURCE_SERVER
