"""What the emulated Globus Auth and Transfer services remember, and the rules they enforce.

One lock guards everything: the handlers are small and synchronous, so a single lock keeps
create-if-absent (the `Exists` check) atomic the way Globus's own database does.

Globus facts this follows (delivery-research.md §1.1, docs.globus.org/api/transfer/permissions):
- a confidential client acts as the identity `<client_id>@clients.auth.globus.org`, whose id is
  the client id;
- identities are looked up by username; `provision=true` creates an `unused` identity for a
  username in a domain Globus Auth knows (an IdP), and nothing for other domains;
- a guest collection holds at most `rule_limit` (1000) permissions; an identity with the
  `administrator` or `access_manager` role may list, create, update and delete them, a
  `restricted_administrator` only list and delete; role holders appear in the access list as
  implicit `rw` rules on `/` carrying `role_id` instead of `id`;
- a permission past its `expiration_date` disappears.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

CLIENT_IDENTITY_DOMAIN = "clients.auth.globus.org"
AUTH_RESOURCE_SERVER = "auth.globus.org"
TRANSFER_RESOURCE_SERVER = "transfer.api.globus.org"
TRANSFER_SCOPE = "urn:globus:auth:scope:transfer.api.globus.org:all"
AUTH_SCOPES = frozenset({"openid", "profile", "email",
                         "urn:globus:auth:scope:auth.globus.org:view_identities"})
DEFAULT_RULE_LIMIT = 1000
TOKEN_LIFETIME_S = 172800


class Role(StrEnum):
    ADMINISTRATOR = "administrator"
    ACCESS_MANAGER = "access_manager"
    RESTRICTED_ADMINISTRATOR = "restricted_administrator"


MANAGING_ROLES = frozenset({Role.ADMINISTRATOR, Role.ACCESS_MANAGER})
VIEWING_ROLES = MANAGING_ROLES | {Role.RESTRICTED_ADMINISTRATOR}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(ts: dt.datetime) -> str:
    return ts.astimezone(dt.UTC).isoformat(timespec="seconds")


def parse_iso(value: str) -> dt.datetime:
    """Parse an ISO 8601 time; a time without a zone is UTC, as Globus reads it."""
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


@dataclass
class Identity:
    id: str
    username: str
    status: str = "used"
    name: str | None = None
    email: str | None = None
    organization: str | None = None
    identity_provider: str = field(default_factory=lambda: str(uuid.uuid4()))

    def document(self) -> dict[str, Any]:
        return {"id": self.id, "username": self.username, "status": self.status,
                "name": self.name, "email": self.email, "organization": self.organization,
                "identity_provider": self.identity_provider}


@dataclass
class Token:
    client_id: str
    resource_server: str
    scopes: frozenset[str]
    expires_at: float


@dataclass
class Collection:
    id: str
    display_name: str
    roles: dict[str, Role] = field(default_factory=dict)
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)
    rule_limit: int = DEFAULT_RULE_LIMIT
    role_ids: dict[str, str] = field(default_factory=dict)

    def role_of(self, identity_id: str) -> Role | None:
        return self.roles.get(identity_id)

    def drop_expired(self, now: dt.datetime) -> None:
        for rule_id, rule in list(self.rules.items()):
            expires = rule.get("expiration_date")
            if expires and parse_iso(expires) <= now:
                del self.rules[rule_id]

    def implicit_rules(self) -> list[dict[str, Any]]:
        """The `rw` on `/` that managing roles imply, listed with `role_id` and no `id`."""
        out = []
        for identity_id, role in self.roles.items():
            if role not in MANAGING_ROLES:
                continue
            out.append({"DATA_TYPE": "access", "id": None,
                        "role_id": self.role_ids[identity_id], "role_type": str(role),
                        "principal_type": "identity", "principal": identity_id, "path": "/",
                        "permissions": "rw", "create_time": None, "expiration_date": None,
                        "notify_email": None})
        return out


@dataclass
class Fault:
    """An injected failure: answer `status` (5xx by default) or stall `delay_s` seconds."""

    service: str                     # "auth" or "transfer"
    method: str | None = None        # None: any method
    path_pattern: str | None = None  # regex searched in the path below the service mount
    status: int = 503
    code: str | None = None
    message: str = "Injected failure from the simulated Globus service"
    delay_s: float = 0.0
    times: int | None = 1            # None: forever
    hits: int = 0

    def matches(self, service: str, method: str, path: str) -> bool:
        if self.service != service:
            return False
        if self.method and self.method.upper() != method.upper():
            return False
        if self.path_pattern and not re.search(self.path_pattern, path):
            return False
        return self.times is None or self.hits < self.times


class GlobusState:
    """The services' memory: clients, identities, tokens, collections, faults, sent notices."""

    def __init__(self, spec: dict[str, Any] | None = None):
        spec = spec or {}
        self.lock = threading.RLock()
        self.idp_domains: set[str] = set(spec.get("idp_domains", []))
        self.clients: dict[str, str] = {}
        self.identities: dict[str, Identity] = {}
        self.tokens: dict[str, Token] = {}
        self.collections: dict[str, Collection] = {}
        self.faults: list[Fault] = []
        self.notifications: list[dict[str, Any]] = []
        self.requests: deque[tuple[str, str, str]] = deque(maxlen=10_000)
        self._signing_key: Any = None
        for client in spec.get("clients", []):
            self.add_client(client["id"], client["secret"])
        for ident in spec.get("identities", []):
            self.add_identity(ident["username"], **{k: v for k, v in ident.items()
                                                    if k != "username"})
        for coll in spec.get("collections", []):
            self.add_collection(coll["id"], coll.get("display_name", coll["id"]),
                                managers=coll.get("managers", {}),
                                rule_limit=coll.get("rule_limit", DEFAULT_RULE_LIMIT))

    # -- set-up -----------------------------------------------------------------------------

    def add_client(self, client_id: str, secret: str) -> Identity:
        with self.lock:
            self.clients[client_id] = secret
            ident = Identity(id=client_id, username=f"{client_id}@{CLIENT_IDENTITY_DOMAIN}",
                             name=f"client {client_id}")
            self.identities[ident.id] = ident
            return ident

    def add_identity(self, username: str, **attrs: Any) -> Identity:
        with self.lock:
            ident = Identity(id=attrs.pop("id", None) or str(uuid.uuid4()), username=username,
                             **attrs)
            self.identities[ident.id] = ident
            return ident

    def add_collection(self, collection_id: str, display_name: str,
                       managers: dict[str, str] | None = None,
                       rule_limit: int = DEFAULT_RULE_LIMIT) -> Collection:
        with self.lock:
            coll = Collection(id=collection_id, display_name=display_name,
                              rule_limit=rule_limit)
            for identity_id, role in (managers or {}).items():
                coll.roles[identity_id] = Role(role)
                coll.role_ids[identity_id] = str(uuid.uuid4())
            self.collections[collection_id] = coll
            return coll

    def add_fault(self, **spec: Any) -> Fault:
        with self.lock:
            fault = Fault(**spec)
            self.faults.append(fault)
            return fault

    def take_fault(self, service: str, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.matches(service, method, path):
                    fault.hits += 1
                    return fault
            return None

    # -- auth -------------------------------------------------------------------------------

    def client_secret_ok(self, client_id: str, secret: str) -> bool:
        with self.lock:
            known = self.clients.get(client_id)
        return known is not None and secrets.compare_digest(known, secret)

    def issue_token(self, client_id: str, resource_server: str, scopes: frozenset[str]) -> str:
        token = secrets.token_urlsafe(24)
        with self.lock:
            self.tokens[token] = Token(client_id, resource_server, scopes,
                                       time.time() + TOKEN_LIFETIME_S)
        return token

    def token_info(self, token: str) -> Token | None:
        with self.lock:
            info = self.tokens.get(token)
        if info is None or info.expires_at < time.time():
            return None
        return info

    def signing_key(self) -> Any:
        """The RSA key Auth signs `id_token`s with (made on first use: it costs ~0.1 s)."""
        from cryptography.hazmat.primitives.asymmetric import rsa

        with self.lock:
            if self._signing_key is None:
                self._signing_key = rsa.generate_private_key(public_exponent=65537,
                                                             key_size=2048)
            return self._signing_key

    def lookup_usernames(self, usernames: list[str], provision: bool) -> list[Identity]:
        """Identities for the usernames Globus knows, creating `unused` ones on request."""
        found = []
        with self.lock:
            by_name = {i.username.lower(): i for i in self.identities.values()}
            for name in usernames:
                ident = by_name.get(name.lower())
                domain = name.rpartition("@")[2].lower()
                if ident is None and provision and "@" in name and domain in self.idp_domains:
                    ident = self.add_identity(name.lower(), status="unused")
                    by_name[ident.username] = ident
                if ident is not None:
                    found.append(ident)
        return found

    def lookup_ids(self, ids: list[str]) -> list[Identity]:
        with self.lock:
            return [self.identities[i] for i in ids if i in self.identities]
