"""Globus delivery: read access for the user on the download's folder of a guest collection.

Pattern (a) of delivery-research.md §1.1: pollcat writes the files under the guest collection's
root on facility storage with the ordinary engine, then creates one endpoint ACL rule giving the
user's Globus identity `r` on `/<download dir>/`, with `expiration_date` at the end of the
retention. The rule id is what the ledger and the manifest keep; the cleanup flow revokes it
and `reconcile` removes rules whose download pollcat no longer holds.

Why these choices:
- The identity is looked up with `provision=True`, so a user who never logged in to Globus can
  be granted (Globus creates an `unused` identity for a username of a known IdP).
- Creating is idempotent: Globus answers 409 `Exists` for the same principal and path, and the
  same 409 status also means `LimitExceeded`, so the error *code* decides. An existing `r` rule
  counts as success and its id is kept (a retried call whose first answer was lost lands here).
- Errors are classified once, here: no such identity, a refused role, the rule limit, a wrong
  client secret, or a conflicting rule are permanent (retrying cannot help, and ALS / Globus
  users complain about jobs retried forever); 5xx, 429, and network failures or timeouts are
  transient. Messages carry the download id and Globus's own code and message, never the client
  secret or a token.
- Clients are globus-sdk's own (v4 `ClientApp` with in-memory token storage, so nothing is
  written to `~/.globus`); `auth_url` / `transfer_url` point them elsewhere (the simulated
  facility), which is the SDK's supported `base_url` mechanism.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import quote

import globus_sdk
from globus_sdk.transport import RequestsTransport, RetryConfig

from pollcat import logsafe
from pollcat.errors import (
    ConfigurationError,
    InvalidUserName,
    PermanentError,
    PermanentServiceError,
    TransientServiceError,
)
from pollcat.layout import check_relpath

log = logging.getLogger("pollcat.globus")

WEB_APP_URL = "https://app.globus.org"
USER_PART_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
READ = "r"


class GlobusService(StrEnum):
    AUTH = "globus-auth"
    TRANSFER = "globus-transfer"


class TransferCode(StrEnum):
    """Transfer error codes pollcat branches on."""

    EXISTS = "Exists"
    LIMIT_EXCEEDED = "LimitExceeded"
    PERMISSION_DENIED = "PermissionDenied"
    RULE_NOT_FOUND = "AccessRuleNotFound"  # what Globus documents for a deleted rule
    NOT_FOUND = "ClientError.NotFound"
    ENDPOINT_NOT_FOUND = "EndpointNotFound"


# --- errors ---------------------------------------------------------------------------------


class GlobusUnavailable(TransientServiceError):
    """Globus answered 5xx / 429, or could not be reached in time: try again later."""


class GlobusIdentityUnknown(PermanentError):
    """The ICAT user maps to no Globus identity (unknown username or IdP)."""


class GlobusPermissionDenied(PermanentServiceError):
    """pollcat's client lacks the access_manager/administrator role on the collection."""


class GlobusRuleLimit(PermanentServiceError):
    """The guest collection holds its maximum number of permissions (1000)."""


class GlobusAuthenticationFailed(PermanentServiceError):
    """Globus Auth refused the client id / secret, or a token: fix the block."""


class GlobusGrantConflict(PermanentServiceError):
    """Another permission for the same identity and folder exists with other rights."""


# --- settings and results -------------------------------------------------------------------


@dataclass(frozen=True)
class GlobusSettings:
    """What a GlobusTarget block holds (see docs/globus-s3.md for the block fields)."""

    client_id: str
    client_secret: str = field(repr=False)
    collection_id: str
    username_template: str = "{user}@idp.example.org"
    identity_map: Mapping[str, str] = field(default_factory=dict)
    lifetime_days: int = 14
    notify_email: bool = False
    http_timeout_s: float = 30.0
    max_retries: int = 2
    auth_url: str | None = None
    transfer_url: str | None = None
    web_app_url: str = WEB_APP_URL

    def __post_init__(self) -> None:
        if not self.client_id or not self.client_secret or not self.collection_id:
            raise ConfigurationError("Globus target needs client_id, client_secret and "
                                     "collection_id")
        if self.lifetime_days < 1:
            raise ConfigurationError(f"Globus lifetime_days must be >= 1, not "
                                     f"{self.lifetime_days}")
        if "{user}" not in self.username_template and "{icat_user}" not in (
                self.username_template):
            raise ConfigurationError(f"Globus username_template {self.username_template!r} "
                                     f"uses neither {{user}} nor {{icat_user}}")


@dataclass(frozen=True)
class GlobusIdentity:
    id: str
    username: str


@dataclass(frozen=True)
class Grant:
    """A permission pollcat holds: what the ledger and the manifest record."""

    rule_id: str
    collection_id: str
    path: str
    identity_id: str
    username: str
    permissions: str
    expiration_date: str | None
    link: str
    created: bool

    def record(self) -> dict[str, Any]:
        """The ledger / manifest form (no secrets: ids, path, expiry and link only)."""
        return asdict(self)


@dataclass(frozen=True)
class OrphanRule:
    rule_id: str
    path: str
    principal: str


# --- the grant module -----------------------------------------------------------------------


def rule_path(directory: str) -> str:
    """`/<dir>/`: the download directory relative to the collection root, as Globus wants it."""
    rel = directory.strip("/")
    check_relpath(rel)
    return f"/{rel}/"


def folder_link(collection_id: str, directory: str, web_app_url: str = WEB_APP_URL) -> str:
    """The Globus web app's file manager on the folder: what TopCAT's customValue carries."""
    path = quote(rule_path(directory), safe="/")
    return f"{web_app_url.rstrip('/')}/file-manager?origin_id={collection_id}&origin_path={path}"


class GlobusGrants:
    """Grant, revoke and reconcile read permissions on one guest collection."""

    def __init__(self, settings: GlobusSettings, *,
                 auth_client: globus_sdk.AuthClient | None = None,
                 transfer_client: globus_sdk.TransferClient | None = None):
        self.settings = settings
        logsafe.register_secret(settings.client_secret)  # never in a log line or a reason
        if auth_client is None or transfer_client is None:
            built_auth, built_transfer = _build_clients(settings)
            auth_client = auth_client or built_auth
            transfer_client = transfer_client or built_transfer
        self.auth = auth_client
        self.transfer = transfer_client

    # identities

    def username_for(self, icat_user: str) -> str:
        """The Globus username (or identity id) for an ICAT user: the map wins, else the
        template with `{user}` (the name without the authenticator, `simple/alice` -> `alice`)
        and `{icat_user}` (the whole name)."""
        mapped = self.settings.identity_map.get(icat_user)
        if mapped:
            return mapped
        user = icat_user.split("/", 1)[1] if "/" in icat_user else icat_user
        if not USER_PART_RE.match(user):
            raise InvalidUserName(f"ICAT user {icat_user!r} cannot form a Globus username; "
                                  f"add it to the Globus identity map")
        return self.settings.username_template.format(user=user, icat_user=icat_user)

    def identity_for(self, icat_user: str, *, download_id: int | None = None) -> GlobusIdentity:
        """Resolve (and provision) the user's Globus identity."""
        name = self.username_for(icat_user)
        query: dict[str, Any] = {"ids": name} if UUID_RE.match(name) else {
            "usernames": name, "provision": True}
        try:
            found = self.auth.get_identities(**query)["identities"]
        except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError) as err:
            raise _translate(err, GlobusService.AUTH, f"looking up Globus identity {name!r}",
                             download_id) from err
        if not found:
            raise GlobusIdentityUnknown(
                f"ICAT user {icat_user!r} has no Globus identity {name!r} (unknown username "
                f"or identity provider); add the user to the Globus identity map",
                download_id=download_id, service=GlobusService.AUTH)
        return GlobusIdentity(id=found[0]["id"], username=found[0]["username"])

    # permissions

    def grant(self, directory: str, icat_user: str, *, email: str | None = None,
              download_id: int | None = None, now: dt.datetime | None = None) -> Grant:
        """Give the user read access on `/<directory>/` until the retention ends.

        Idempotent: if the same identity already has `r` on the folder, that rule is the
        grant (its expiry is moved to the new end of retention)."""
        path = rule_path(directory)
        identity = self.identity_for(icat_user, download_id=download_id)
        expires = ((now or dt.datetime.now(dt.UTC)) + dt.timedelta(
            days=self.settings.lifetime_days)).replace(microsecond=0).isoformat()
        doc: dict[str, Any] = {"DATA_TYPE": "access", "principal_type": "identity",
                               "principal": identity.id, "path": path, "permissions": READ,
                               "expiration_date": expires}
        if self.settings.notify_email and email:
            doc["notify_email"] = email
        action = f"granting {identity.username} read access on {path}"
        try:
            rule_id = self.transfer.add_endpoint_acl_rule(self.settings.collection_id,
                                                          doc)["access_id"]
            created = True
        except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError) as err:
            if not _is(err, 409, TransferCode.EXISTS):
                raise _translate(err, GlobusService.TRANSFER, action, download_id) from err
            rule_id = self._adopt_existing(identity, path, expires, download_id)
            created = False
        log.info("download %s: Globus rule %s gives %s read access on %s (%s)", download_id,
                 rule_id, identity.username, path, "created" if created else "already there")
        return Grant(rule_id=str(rule_id), collection_id=self.settings.collection_id,
                     path=path, identity_id=identity.id, username=identity.username,
                     permissions=READ, expiration_date=expires,
                     link=folder_link(self.settings.collection_id, directory,
                                      self.settings.web_app_url),
                     created=created)

    def _adopt_existing(self, identity: GlobusIdentity, path: str, expires: str,
                        download_id: int | None) -> str:
        """After `Exists`: find the rule; an `r` rule is ours, anything else a conflict."""
        for rule in self.list_rules(download_id):
            if (rule.get("id") and rule.get("principal_type") == "identity"
                    and rule.get("principal") == identity.id and rule.get("path") == path):
                if rule.get("permissions") != READ:
                    raise GlobusGrantConflict(
                        f"{identity.username} already has {rule.get('permissions')!r} "
                        f"(not 'r') on {path} through rule {rule['id']}",
                        download_id=download_id, service=GlobusService.TRANSFER,
                        status=409, code=TransferCode.EXISTS)
                if _parse_time(rule.get("expiration_date")) != _parse_time(expires):
                    self._call(self.transfer.update_endpoint_acl_rule,
                               self.settings.collection_id, rule["id"],
                               {"DATA_TYPE": "access", "expiration_date": expires},
                               action=f"extending rule {rule['id']} on {path}",
                               download_id=download_id)
                return str(rule["id"])
        raise GlobusUnavailable(
            f"Globus said a rule for {identity.username} on {path} exists but does not list it",
            download_id=download_id, service=GlobusService.TRANSFER, status=409,
            code=TransferCode.EXISTS)

    def revoke(self, rule_id: str, *, download_id: int | None = None) -> bool:
        """Delete a permission; True if deleted, False if Globus no longer had it.

        Any 404 means the rule is gone, and counts as revoked: Globus answers
        `AccessRuleNotFound` for a rule already deleted (out of band, or by a first DELETE
        whose answer was lost) and for one dropped at its `expiration_date`; other 404 codes
        (`ClientError.NotFound`, or `EndpointNotFound` for a collection that no longer exists,
        taking its rules with it) leave nothing to revoke either. Anything else raises, so a
        rule still there is never marked revoked."""
        try:
            self.transfer.delete_endpoint_acl_rule(self.settings.collection_id, rule_id)
        except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError) as err:
            if isinstance(err, globus_sdk.GlobusAPIError) and err.http_status == 404:
                if err.code == TransferCode.ENDPOINT_NOT_FOUND:
                    log.warning("download %s: Globus collection %s no longer exists; its rule "
                                "%s went with it", download_id, self.settings.collection_id,
                                rule_id)
                else:
                    log.info("download %s: Globus rule %s was already gone (%s)",
                             download_id, rule_id, err.code)
                return False
            raise _translate(err, GlobusService.TRANSFER, f"deleting rule {rule_id}",
                             download_id) from err
        log.info("download %s: Globus rule %s deleted", download_id, rule_id)
        return True

    def reconcile(self, live_directories: Iterable[str], *, managed_prefix: str,
                  min_age: dt.timedelta = dt.timedelta(hours=1),
                  now: dt.datetime | None = None) -> list[OrphanRule]:
        """Delete pollcat's rules whose folder is not among `live_directories`.

        pollcat's rules are the identity `r` rules on folders under `managed_prefix` (the part
        of the collection pollcat delivers into; required, so a shared collection's other
        permissions are never at risk); role rules, group, anonymous and `rw` rules are
        someone else's and never touched. `live_directories` must include downloads being
        delivered; rules younger than `min_age` are kept anyway, so a grant made while the
        live set was being read is not taken back."""
        live = {rule_path(d) for d in live_directories}
        prefix = "/" if managed_prefix.strip("/") == "" else rule_path(managed_prefix)
        cutoff = (now or dt.datetime.now(dt.UTC)) - min_age
        removed = []
        for rule in self.list_rules(None):
            if not rule.get("id") or rule.get("principal_type") != "identity":
                continue
            path = rule.get("path") or ""
            if rule.get("permissions") != READ or not path.startswith(prefix) or path in live:
                continue
            created = _parse_time(rule.get("create_time"))
            if created is not None and created > cutoff:
                continue
            self.revoke(str(rule["id"]))
            removed.append(OrphanRule(rule_id=str(rule["id"]), path=path,
                                      principal=rule.get("principal", "")))
        return removed

    def preflight(self) -> str | None:
        """Check the block before any delivery: the credentials work and the collection's
        permissions can be read. Returns the client's managing role when the list shows it
        (an implicit role rule for the client's identity), else None (the role may come
        through a group; creating a rule will tell). Raises the same errors as `grant`."""
        for rule in self.list_rules(None):
            if rule.get("role_id") and rule.get("principal") == self.settings.client_id:
                return str(rule.get("role_type"))
        log.warning("Globus collection %s lists no role for client %s; granting needs "
                    "access_manager or administrator", self.settings.collection_id,
                    self.settings.client_id)
        return None

    def list_rules(self, download_id: int | None = None) -> list[dict[str, Any]]:
        response = self._call(self.transfer.endpoint_acl_list, self.settings.collection_id,
                              action="listing the collection's permissions",
                              download_id=download_id)
        return list(response)

    def _call(self, method, *args: Any, action: str, download_id: int | None) -> Any:
        try:
            return method(*args)
        except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError) as err:
            raise _translate(err, GlobusService.TRANSFER, action, download_id) from err


def _build_clients(settings: GlobusSettings) -> tuple[globus_sdk.AuthClient,
                                                      globus_sdk.TransferClient]:
    login = globus_sdk.ConfidentialAppAuthClient(settings.client_id, settings.client_secret,
                                                 base_url=settings.auth_url,
                                                 transport=_transport(settings))
    app = globus_sdk.ClientApp("pollcat", login_client=login,
                               config=globus_sdk.GlobusAppConfig(token_storage="memory"))
    retry = RetryConfig(max_retries=settings.max_retries, max_sleep=5)
    auth = globus_sdk.AuthClient(app=app, base_url=settings.auth_url,
                                 transport=_transport(settings), retry_config=retry)
    transfer = globus_sdk.TransferClient(app=app, base_url=settings.transfer_url,
                                         transport=_transport(settings), retry_config=retry)
    return auth, transfer


def _transport(settings: GlobusSettings) -> RequestsTransport:
    return RequestsTransport(http_timeout=settings.http_timeout_s)


def _is(err: Exception, status: int, code: str) -> bool:
    """Is this Transfer's answer `status` with error `code` (a 409 can mean two things)?"""
    return (isinstance(err, globus_sdk.TransferAPIError) and err.http_status == status
            and err.code == code)


def _translate(err: Exception, service: GlobusService, action: str,
               download_id: int | None) -> Exception:
    """One classification of Globus failures into pollcat's transient / permanent families."""
    if isinstance(err, globus_sdk.NetworkError):
        cause = type(err.underlying_exception).__name__
        return GlobusUnavailable(f"{action}: Globus could not be reached ({cause})",
                                 download_id=download_id, service=service)
    assert isinstance(err, globus_sdk.GlobusAPIError)
    status, code = err.http_status, err.code
    said = err.message or code or "no message"
    kwargs = {"download_id": download_id, "service": service, "status": status, "code": code}
    if status >= 500 or status == 429:
        return GlobusUnavailable(f"{action}: Globus is unavailable: {said}", **kwargs)
    if code == TransferCode.LIMIT_EXCEEDED:
        return GlobusRuleLimit(f"{action}: the collection holds its maximum number of "
                               f"permissions; revoke expired ones: {said}", **kwargs)
    if status == 403 or code == TransferCode.PERMISSION_DENIED:
        return GlobusPermissionDenied(
            f"{action}: pollcat's Globus client needs the access_manager or administrator "
            f"role on collection: {said}", **kwargs)
    if status == 401:
        return GlobusAuthenticationFailed(f"{action}: Globus refused pollcat's client "
                                          f"credentials: {said}", **kwargs)
    return PermanentServiceError(f"{action}: Globus refused: {said}", **kwargs)


# --- the access-hook face (plan / apply / revoke, as pollcat.access's hooks) ------------------


@dataclass(frozen=True)
class PlannedGrant:
    """One permission `apply` would create."""

    download_id: int
    path: str
    username: str
    identity_id: str

    def describe(self) -> str:
        return f"download {self.download_id}: grant {self.username} 'r' on {self.path}"


class GlobusAccessHook:
    """The Globus grant behind the same plan / apply / revoke calls as the POSIX access hook.

    `ctx` needs `download_id`, `icat_user`, `download_dir` (relative to the collection root)
    and optionally `email`; `record` receives one dict per change (the ledger). A rerun plans
    nothing when the identity already has `r` on the folder.
    """

    name = "globus"

    def __init__(self, grants: GlobusGrants):
        self.grants = grants

    def plan(self, ctx: Any) -> list[PlannedGrant]:
        path = rule_path(ctx.download_dir)
        identity = self.grants.identity_for(ctx.icat_user, download_id=ctx.download_id)
        for rule in self.grants.list_rules(ctx.download_id):
            if (rule.get("id") and rule.get("principal") == identity.id
                    and rule.get("path") == path and rule.get("permissions") == READ):
                return []
        return [PlannedGrant(ctx.download_id, path, identity.username, identity.id)]

    def dry_run(self, ctx: Any, out=print) -> list[PlannedGrant]:
        planned = self.plan(ctx)
        for item in planned:
            out(item.describe())
        if not planned:
            out(f"download {ctx.download_id}: Globus permission already in place")
        return planned

    def apply(self, ctx: Any, planned: Iterable[PlannedGrant],
              record: Any) -> int:
        applied = 0
        for _item in planned:
            grant = self.grants.grant(ctx.download_dir, ctx.icat_user,
                                      email=getattr(ctx, "email", None),
                                      download_id=ctx.download_id)
            record({"download_id": ctx.download_id, "hook": self.name,
                    "kind": "grant-globus-acl", **grant.record(), "at": _now_iso()})
            applied += 1
        return applied

    def revoke(self, ctx: Any, records: Iterable[Mapping[str, Any]],
               record: Any | None = None) -> int:
        """Delete the recorded rules (a rule Globus no longer has counts as done)."""
        undone = 0
        for rec in records:
            if rec.get("hook") != self.name or rec.get("kind") != "grant-globus-acl":
                continue
            if rec.get("collection_id") != self.grants.settings.collection_id:
                log.warning("download %s: rule %s is on collection %s, not this target's",
                            ctx.download_id, rec.get("rule_id"), rec.get("collection_id"))
                continue
            deleted = self.grants.revoke(str(rec["rule_id"]), download_id=ctx.download_id)
            undone += 1
            if record is not None:
                record({"download_id": ctx.download_id, "hook": self.name,
                        "kind": "revoke-globus-acl", "rule_id": rec["rule_id"],
                        "collection_id": rec["collection_id"], "path": rec.get("path"),
                        "was_present": deleted, "at": _now_iso()})
        return undone


def _parse_time(value: Any) -> dt.datetime | None:
    """A Globus timestamp as an aware datetime (None if absent or unreadable)."""
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
