"""TopCAT's server side: the Download store, carts, the StatusCheck poller and scenario downloads.

This is the half of TopCAT that pollcat depends on most (wire reference §2.5-§2.7, §4): a
download is created by the user's cart submit, prepared by StatusCheck with the *user's* session
through the transport's IDS, and then, for non-http transports, left in RESTORING until an
outside agent (pollcat) sets it COMPLETE. Every ICAT and IDS call goes over HTTP
(`topcat_clients`) so injected faults reach TopCAT as they would in production.

Choices for points the reference marks (inferred) or leaves open:

- Download JSON keys come out in lexicographic order (Yasson's default), null fields omitted,
  dates `2020-03-01T15:57:28Z[UTC]` to the second (TopCAT's database drops milliseconds). The
  getter-only helpers (`investigationIds`, ...) and the successor's `priority` are not emitted.
- StatusCheck runs every 0.1 s rather than every second, so tests are quick; `poll_delay_s` and
  `poll_interval_wait_s` keep their meaning. It follows the successor in checking a RESTORING
  download against the IDS only once it has a preparedId.
- prepareData errors: IDS 404 is retried after `poll_interval_wait_s`; any other IDS error and
  an unreachable IDS (connection failure or timeout) expire the download. isPrepared: 404 and
  unreachable are retried, any other error expires.
- Single-level submit prepares at once and also asks the IDS for the size (as StatusCheck does),
  then sets COMPLETE. If that prepareData fails, the submit fails (IDS 404 -> 404, otherwise
  400) and the cart is kept.
- The features follow `topcat.version` (`simfacility.profiles`): `customValue` from 3.2.0 (its
  mail goes out at once, even if one was already sent, with `${downloadUrl}` left literal), the
  admin `prepare` from 3.1.0 (404 `HTTP 404 Not Found` before), `QUEUED` from 3.0.0.
- Successor `prepare`: undeletes and clears `completedAt`/`deletedAt` (kept even if the IDS then
  fails), prepares with the admin session without storing it, keeps `createdAt`,
  `isEmailSent` and the user's session, asks getSize only when `size <= 0`, and answers IDS
  errors as 404/400.
- An admin status PUT does not reset StatusCheck's per-download clock, so the mail after an
  agent's COMPLETE goes out on the first check at least `poll_interval_wait_s` after the
  previous one, as in production (up to 600 s with TopCAT's defaults).
- Mail templates render with `StringSubstitutor` rules (`simfacility.substitutor`); a cycle
  fails a 3.2 customValue PUT with 500 and stops StatusCheck's mail (logged, not sent).
- Malformed cart `items` answer 500 with a Java-like message, as `Long.parseLong` /
  `EntityType.valueOf` failures do in TopCAT. Entities ICAT does not return for the user are
  silently not added.
"""

from __future__ import annotations

import bisect
import logging
import operator
import re
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import requests

from simfacility import mailer
from simfacility.errors import TopcatError
from simfacility.scenario import ScenarioError
from simfacility.substitutor import SubstitutionCycle
from simfacility.topcat_clients import (
    DataSelection,
    IcatClient,
    IdsClient,
    RemoteError,
    Unreachable,
)
from simfacility.topcat_query import STATUSES, Enum, Query

if TYPE_CHECKING:
    from simfacility.facility import SimFacility

log = logging.getLogger("simfacility.topcat")

HTTP_TRANSPORTS = ("https", "http")
ENTITY_TYPES = ("investigation", "dataset", "datafile")
POLL_PERIOD_S = 0.1
STATUSES_2_4 = tuple(s for s in STATUSES if s != "QUEUED")
ICAT_CHUNK = 100


def yasson_time(dt: datetime | None) -> str | None:
    """`java.util.Date` as Yasson writes it on Payara 5/6: `2020-03-01T15:57:28Z[UTC]`."""
    if dt is None:
        return None
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ[UTC]")


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


#: A download's JPQL/JSON attribute names and the fields holding them (`Download._fields`).
FIELD_ATTRIBUTES = {
    "id": "id", "facilityName": "facility_name", "userName": "user_name",
    "fullName": "full_name", "transport": "transport", "fileName": "file_name",
    "preparedId": "prepared_id", "sessionId": "session_id", "email": "email",
    "isEmailSent": "is_email_sent", "status": "status", "size": "size",
    "isTwoLevel": "is_two_level", "createdAt": "created_at", "isDeleted": "is_deleted",
    "deletedAt": "deleted_at", "completedAt": "completed_at",
}


@dataclass
class DownloadItem:
    id: int
    entity_type: str
    entity_id: int

    def to_json(self) -> dict[str, Any]:
        return {"entityId": self.entity_id, "entityType": self.entity_type, "id": self.id}


@dataclass
class Download:
    """One row of TopCAT's DOWNLOAD table (`domain/Download.java`)."""

    id: int
    facility_name: str
    user_name: str
    transport: str
    file_name: str
    session_id: str
    items: list[DownloadItem]
    full_name: str | None = None
    email: str | None = None
    prepared_id: str | None = None
    status: str = "PREPARING"
    size: int = 0
    is_two_level: bool = False
    is_email_sent: bool = False
    is_deleted: bool = False
    created_at: datetime = field(default_factory=now)
    completed_at: datetime | None = None
    deleted_at: datetime | None = None
    created_ts: float = field(default_factory=time.time)

    def selection(self) -> DataSelection:
        sel = DataSelection()
        for item in self.items:
            {"investigation": sel.investigation_ids, "dataset": sel.dataset_ids,
             "datafile": sel.datafile_ids}[item.entity_type].append(item.entity_id)
        return sel

    def attr(self, name: str) -> Any:
        """An attribute by its JPQL/JSON name, for queryOffset evaluation."""
        if name == "status":
            return Enum(self.status)
        return getattr(self, FIELD_ATTRIBUTES[name])

    def _fields(self) -> dict[str, Any]:
        return {name: getattr(self, field) for name, field in FIELD_ATTRIBUTES.items()}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self._fields().items():
            if isinstance(value, datetime):
                value = yasson_time(value)
            if value is not None:
                out[key] = value
        out["downloadItems"] = [i.to_json() for i in self.items]
        return dict(sorted(out.items()))


@dataclass
class CartItem:
    id: int
    entity_type: str
    entity_id: int
    name: str
    parents: list[tuple[int, str, int]]  # (parent entity row id, entityType, entityId)

    def to_json(self) -> dict[str, Any]:
        return {"entityId": self.entity_id, "entityType": self.entity_type, "id": self.id,
                "name": self.name,
                "parentEntities": [{"entityId": eid, "entityType": et, "id": pid}
                                   for pid, et, eid in self.parents]}


@dataclass
class Cart:
    id: int
    facility_name: str
    user_name: str
    items: list[CartItem] = field(default_factory=list)
    created_at: datetime = field(default_factory=now)
    updated_at: datetime = field(default_factory=now)

    def to_json(self) -> dict[str, Any]:
        return {"cartItems": [i.to_json() for i in self.items],
                "createdAt": yasson_time(self.created_at), "facilityName": self.facility_name,
                "id": self.id, "updatedAt": yasson_time(self.updated_at),
                "userName": self.user_name}


def empty_cart(facility_name: str, user_name: str, download_id: int | None = None) -> dict:
    """`UserResource.emptyCart`: built with JsonObjectBuilder, so insertion order."""
    out: dict[str, Any] = {"facilityName": facility_name, "userName": user_name,
                           "cartItems": []}
    if download_id is not None:
        out["downloadId"] = download_id
    return out


def ids_error(exc: RemoteError | Unreachable) -> TopcatError:
    """TopCAT's IdsClient: 404 -> NotFoundException, everything else -> BadRequestException."""
    if isinstance(exc, RemoteError) and exc.status == 404:
        return TopcatError("NotFoundException", exc.message, 404)
    return TopcatError("BadRequestException", str(exc), 400)


def icat_user_error(exc: RemoteError | Unreachable) -> TopcatError:
    """UserResource: ICAT 404 -> 404, any other ICAT failure -> 400 with ICAT's message."""
    if isinstance(exc, RemoteError) and exc.status == 404:
        return TopcatError("NotFoundException", exc.message, 404)
    return TopcatError("BadRequestException", str(exc), 400)


class TopcatState:
    """TopCAT's database and background work for one facility."""

    def __init__(self, fac: SimFacility):
        self.fac = fac
        self.lock = threading.RLock()
        self.downloads: dict[int, Download] = {}
        self._pk_order: list[int] = []  # the primary key's order, for `_from_id`
        self.carts: dict[tuple[str, str], Cart] = {}
        self._ids = 0
        self._download_ids = 0  # its own sequence, like the DOWNLOAD table's, so ids are 1, 2, 3
        self._last_checks: dict[int, float] = {}
        # every admin status PUT that TopCAT accepted, in order: (download id, status). TopCAT
        # keeps only the last status; this log lets a test prove one COMPLETE per download
        self.admin_status_puts: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Handlers run blocking HTTP calls here, not on the server's shared thread pool, so
        # TopCAT waiting on ICAT can never starve the ICAT handlers it is waiting for.
        self.executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="topcat")

    # ------------------------------------------------------------------ config and clients
    @property
    def config(self):
        return self.fac.config.topcat

    def next_id(self) -> int:
        with self.lock:
            self._ids += 1
            return self._ids

    def next_download_id(self) -> int:
        with self.lock:
            self._download_ids += 1
            return self._download_ids

    def icat(self) -> IcatClient:
        return IcatClient(self._base_url(), timeout=self.config.icat_timeout_s)

    def download_url(self, transport: str) -> str:
        """`facility.F.downloadType.<t>`, falling back to idsUrl (this simulator's IDS)."""
        return self.config.download_types.get(transport) or self._base_url()

    def ids(self, transport: str) -> IdsClient:
        return IdsClient(self.download_url(transport), timeout=self.config.ids_timeout_s)

    def _base_url(self) -> str:
        if not self.fac.base_url:
            raise TopcatError("InternalException", "facility not started", 500)
        return self.fac.base_url

    def check_facility(self, facility_name: str | None, where: str) -> None:
        """FacilityMap.getIcatUrl: only the configured facility is known."""
        if facility_name is None:
            raise TopcatError("BadRequestException",
                              f"{where}: facilityName is null. Perhaps request is using old API?")
        if facility_name != self.fac.config.facility:
            raise TopcatError("BadRequestException",
                              f"FacilityMap.getIcatUrl: unknown facility: {facility_name}")

    # ------------------------------------------------------------------ identities
    def is_admin(self, facility_name: str | None, session_id: str | None) -> bool:
        """`AdminResource.isAdmin`: ICAT's user name in adminUserNames; any failure -> false."""
        if facility_name is None:
            return False  # icatUrl=null: the ICAT call fails
        self.check_facility(facility_name, "AdminResource")
        try:
            user = self.icat().user_name(session_id or "null")
            return user in self.config.admin_user_names
        except (RemoteError, Unreachable, ValueError, KeyError):
            return False

    def require_admin(self, facility_name: str | None, session_id: str | None) -> None:
        if not self.is_admin(facility_name, session_id):
            raise TopcatError("ForbiddenException",
                              "please provide a valid facilityName and sessionId", 403)

    def user_name(self, session_id: str | None) -> str:
        try:
            return self.icat().user_name(session_id or "null")
        except (RemoteError, Unreachable) as exc:
            raise icat_user_error(exc) from exc

    # ------------------------------------------------------------------ downloads
    def get(self, download_id: int) -> Download:
        with self.lock:
            d = self.downloads.get(download_id)
        if d is None:
            raise TopcatError("NotFoundException", "could not find download", 404)
        return d

    def query(self, query: Query, user_name: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            rows: Iterable[Download] = self._from_id(query.id_floor)
            equal = dict(query.equal)
            if user_name is not None:
                equal["userName"] = user_name
            if equal:  # one pass at about a database's scan speed, stopped early by a window
                fields = operator.attrgetter(*(FIELD_ATTRIBUTES[k] for k in equal))
                want = tuple(equal.values()) if len(equal) > 1 else next(iter(equal.values()))
                rows = (d for d in rows if fields(d) == want)
            rows = query.apply(rows, lambda d, a: d.attr(a))
            return [d.to_json() for d in rows]

    def _from_id(self, floor: int | None) -> list[Download]:
        """Downloads with an id above `floor`, found as TopCAT's database finds them: through
        the primary key's order (the table only ever grows at the top), not by a scan."""
        if floor is None:
            return list(self.downloads.values())
        if len(self._pk_order) != len(self.downloads):  # rows are only added, ids ascending
            self._pk_order = list(self.downloads)
        table, order = self.downloads, self._pk_order
        return [table[i] for i in order[bisect.bisect_right(order, floor):]]

    def set_status(self, download_id: int, value: str | None, session_id: str | None = None,
                   custom_value: str | None = None, admin: bool = False) -> None:
        """PUT .../status: COMPLETE sets completedAt; from 3.2.0 a customValue mails at once.

        No transition check (as in every version). Before download-api 3.2.0 the `customValue`
        field does not exist and is ignored; `QUEUED` exists only from 3.0.0. From 3.2.0 the
        customValue mail is sent whatever `isEmailSent` says, with `downloadUrl` null; a
        template that cannot be rendered (a substitution cycle) fails the whole PUT with 500 and
        leaves the download unchanged (the exception rolls the transaction back).
        """
        features = self.config.features
        statuses = STATUSES if features.queued_status else STATUSES_2_4
        if value not in statuses:
            raise TopcatError("InternalException",
                              "java.lang.IllegalArgumentException No enum constant "
                              f"org.icatproject.topcat.domain.DownloadStatus.{value}", 500)
        mail: dict[str, Any] | None = None
        with self.lock:
            d = self.get(download_id)
            if admin and features.queued_status:
                if value == "RESTORING" and d.status == "QUEUED":
                    value = "PREPARING"
                if value == "PREPARING" and session_id:
                    d.session_id = session_id
            if (admin and value == "COMPLETE" and custom_value and features.custom_value):
                mail = self.mail_values(d, custom_value, download_url=False)
                try:
                    mailer.check_renders(self.fac, mail, d.transport)
                except SubstitutionCycle as exc:
                    raise TopcatError("InternalException",
                                      f"java.lang.IllegalStateException {exc}", 500) from None
            d.status = value
            if admin:
                self.admin_status_puts.append((d.id, value))
            if value == "COMPLETE":
                d.completed_at = now()
                if mail is not None:
                    d.is_email_sent = True
        if mail is not None:
            mailer.send_download_ready(self.fac, mail, d.email, d.id, d.transport)

    def set_deleted(self, download_id: int, value: str | None) -> None:
        flag = (value or "").lower() == "true"
        with self.lock:
            d = self.get(download_id)
            d.is_deleted = flag
            if flag:
                d.deleted_at = now()

    def owned(self, download_id: int, user_name: str) -> Download:
        d = self.get(download_id)
        if d.user_name != user_name:
            raise TopcatError("ForbiddenException",
                              "you do not have permission to delete this download", 403)
        return d

    def admin_prepare(self, download_id: int, session_id: str) -> None:
        """download-api 3.1+ `PUT /admin/download/{id}/prepare` (StatusCheck.prepareDownload).

        Undeletes and clears `completedAt` first; those changes stay even when the IDS call then
        fails (a checked TopcatException does not roll back, inferred). prepareData runs with
        the admin session, which is not stored; `createdAt`, `isEmailSent` and the user's
        `sessionId` are kept; getSize is asked only when the size is not known yet.
        """
        if not self.config.features.admin_prepare:
            raise TopcatError("NotFoundException", "HTTP 404 Not Found", 404)
        d = self.get(download_id)
        with self.lock:
            d.is_deleted = False
            d.deleted_at = d.completed_at = None
        try:
            prepared_id = self.ids(d.transport).prepare_data(session_id, d.selection())
        except (RemoteError, Unreachable) as exc:
            raise ids_error(exc) from exc
        size = d.size if d.size > 0 else self._size(d.transport, session_id, d.selection())
        with self.lock:
            self._finish_prepare(d, prepared_id, size)

    def _finish_prepare(self, d: Download, prepared_id: str, size: int) -> None:
        """StatusCheck.prepareDownload's last step (caller holds the lock)."""
        d.prepared_id = prepared_id
        d.size = size
        if d.is_two_level or d.transport not in HTTP_TRANSPORTS:
            d.status = "RESTORING"
        else:
            d.status = "COMPLETE"
            d.completed_at = now()
        self._last_checks.pop(d.id, None)

    def _size(self, transport: str, session_id: str, selection: DataSelection) -> int:
        try:
            return self.ids(transport).get_size(session_id, selection)
        except (RemoteError, Unreachable, ValueError):
            return -1

    # ------------------------------------------------------------------ carts
    def cart_json(self, facility_name: str, user_name: str) -> dict[str, Any]:
        with self.lock:
            cart = self.carts.get((facility_name, user_name))
            return cart.to_json() if cart else empty_cart(facility_name, user_name)

    def add_cart_items(self, facility_name: str, session_id: str, items: str) -> dict:
        user = self.user_name(session_id)
        wanted = parse_items(items)
        found: list[CartItem] = []
        for entity_type in ENTITY_TYPES:
            ids = [i for t, i in wanted if t == entity_type]
            for start in range(0, len(ids), ICAT_CHUNK):
                found += self._lookup(session_id, entity_type, ids[start : start + ICAT_CHUNK])
        with self.lock:
            cart = self.carts.get((facility_name, user))
            if cart is None:
                cart = Cart(self.next_id(), facility_name, user)
                self.carts[(facility_name, user)] = cart
            present = {(i.entity_type, i.entity_id) for i in cart.items}
            for item in found:
                if (item.entity_type, item.entity_id) not in present:
                    cart.items.append(item)
                    present.add((item.entity_type, item.entity_id))
            cart.items = [i for i in cart.items
                          if not any((t, e) in present for _, t, e in i.parents)]
            cart.updated_at = now()
            return cart.to_json()

    def remove_cart_items(self, facility_name: str, session_id: str, items: str | None) -> dict:
        user = self.user_name(session_id)
        with self.lock:
            cart = self.carts.get((facility_name, user))
            if cart is None:
                return empty_cart(facility_name, user)
            if (items or "").strip() == "*":
                cart.items = []
            else:
                for part in _split_items(items or ""):
                    cart.items = [i for i in cart.items if not _item_matches(i, part)]
            if not cart.items:
                del self.carts[(facility_name, user)]
                return empty_cart(facility_name, user)
            cart.updated_at = now()
            return cart.to_json()

    def _lookup(self, session_id: str, entity_type: str, ids: list[int]) -> list[CartItem]:
        """Find entities in ICAT as the user, with their parents, as TopCAT's IcatClient does."""
        if not ids:
            return []
        id_list = ", ".join(str(i) for i in ids)
        include = {"datafile": " include datafile.dataset.investigation",
                   "dataset": " include dataset.investigation", "investigation": ""}
        query = (f"SELECT {entity_type} from {entity_type.capitalize()} {entity_type} "
                 f"where {entity_type}.id in ({id_list}){include[entity_type]}")
        try:
            rows = self.icat().search(session_id, query)
        except (RemoteError, Unreachable) as exc:
            raise icat_user_error(exc) from exc
        return [self._cart_item(entity_type, _unwrap(row)) for row in rows]

    def _cart_item(self, entity_type: str, entity: dict[str, Any]) -> CartItem:
        parents: list[tuple[int, str, int]] = []
        if entity_type == "datafile":
            ds = entity.get("dataset") or {}
            inv = ds.get("investigation") or {}
            parents = [(self.next_id(), "investigation", int(inv["id"])),
                       (self.next_id(), "dataset", int(ds["id"]))]
        elif entity_type == "dataset":
            inv = entity.get("investigation") or {}
            parents = [(self.next_id(), "investigation", int(inv["id"]))]
        return CartItem(self.next_id(), entity_type, int(entity["id"]),
                        str(entity.get("name", "")), parents)

    def submit(self, facility_name: str, session_id: str, transport: str | None,
               file_name: str | None, email: str | None) -> dict[str, Any]:
        """`UserResource.submitCart` (wire reference §2.5)."""
        if not file_name or not file_name.strip():
            raise TopcatError("BadRequestException", "fileName is required")
        if not transport or not transport.strip():
            raise TopcatError("BadRequestException", "transport is required")
        user = self.user_name(session_id)
        full_name = self._full_name(session_id, user)
        with self.lock:
            cart = self.carts.get((facility_name, user))
            if cart is None or not cart.items:
                return empty_cart(facility_name, user)
            items = [DownloadItem(self.next_id(), i.entity_type, i.entity_id)
                     for i in cart.items]
        ids = self.ids(transport)
        try:
            two_level = ids.is_two_level()
        except (RemoteError, Unreachable) as exc:
            raise ids_error(exc) from exc
        d = Download(id=0, facility_name=facility_name, user_name=user, transport=transport,
                     file_name=file_name, session_id=session_id, items=items,
                     full_name=full_name, email=email or None, is_two_level=two_level)
        if not two_level:
            self._prepare_single_level(d)
        with self.lock:
            d.id = self.next_download_id()
            self.downloads[d.id] = d
            self.carts.pop((facility_name, user), None)
        log.info("download %s submitted by %s (%s, %s)", d.id, user, transport, d.status)
        return empty_cart(facility_name, user, d.id)

    def _prepare_single_level(self, d: Download) -> None:
        """Single-level IDS: prepare now and COMPLETE whatever the transport (§2.5 step 5)."""
        try:
            d.prepared_id = self.ids(d.transport).prepare_data(d.session_id, d.selection())
        except (RemoteError, Unreachable) as exc:
            raise ids_error(exc) from exc
        d.size = self._size(d.transport, d.session_id, d.selection())
        d.status = "COMPLETE"
        d.completed_at = now()

    def _full_name(self, session_id: str, user: str) -> str:
        try:
            return self.icat().full_name(session_id) or user
        except (RemoteError, Unreachable, ValueError):
            return user

    # ------------------------------------------------------------------ email
    def mail_values(self, d: Download, custom_value: str | None = None,
                    download_url: bool = True) -> dict[str, Any]:
        """The substitution map of `sendDownloadReadyEmail`; `downloadUrl` is null on the 3.2
        customValue path."""
        values: dict[str, Any] = {
            "userName": d.full_name or d.user_name, "email": d.email,
            "facilityName": d.facility_name, "preparedId": d.prepared_id,
            "downloadUrl": (f"{self.download_url(d.transport)}/ids/getData?"
                            f"preparedId={d.prepared_id}&outname={d.file_name}"
                            if download_url else None),
            "fileName": d.file_name, "size": mailer.human_size(max(d.size, 0)),
        }
        if custom_value:
            values["customValue"] = custom_value
        return values

    def send_email(self, d: Download) -> bool:
        """StatusCheck's mail: a template that cannot be rendered is logged, never sent."""
        try:
            mailer.send_download_ready(self.fac, self.mail_values(d), d.email, d.id,
                                       d.transport)
        except SubstitutionCycle as exc:
            log.warning("download %s: could not render the mail: %s", d.id, exc)
            return False
        return True

    # ------------------------------------------------------------------ lifecycle
    def start(self, base_url: str) -> None:
        """Submit the scenario's downloads over HTTP, then start StatusCheck."""
        self._stop.clear()
        http = requests.Session()  # keep-alive: 1,000 scenario downloads start in seconds
        logins: dict[str, str] = {}
        for i, raw in enumerate(self.fac.config.downloads):
            self._submit_scenario_download(base_url, raw, f"downloads[{i}]", http, logins)
        http.close()
        if self.config.status_check:
            self._thread = threading.Thread(target=self._run, name="topcat-statuscheck",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.executor.shutdown(wait=False, cancel_futures=True)

    def _submit_scenario_download(self, base_url: str, raw: dict[str, Any], where: str,
                                  http: requests.Session, logins: dict[str, str]) -> None:
        """Log in as the user (once) and go through the cart exactly as the TopCAT web UI
        would."""
        user = self._scenario_user(raw, where)
        items = ", ".join(f"{t} {i}" for t, i in self._scenario_items(raw, where))
        plugin, _, bare = user.name.partition("/") if "/" in user.name else ("simple", "",
                                                                               user.name)
        if user.name not in logins:
            logins[user.name] = IcatClient(base_url).login(plugin, bare, user.password)
        sid = logins[user.name]
        facility = self.fac.config.facility
        cart_url = f"{base_url}/topcat/user/cart/{facility}"
        resp = http.post(f"{cart_url}/cartItems", timeout=30,
                         data={"sessionId": sid, "items": items})
        resp.raise_for_status()
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        form = {"sessionId": sid, "transport": raw.get("transport", "https"),
                "fileName": raw.get("file_name") or f"{facility}_{stamp}",
                "email": raw.get("email") or "", "zipType": "ZIP"}
        resp = http.post(f"{cart_url}/submit", timeout=60, data=form)
        if resp.status_code != 200 or "downloadId" not in resp.json():
            raise ScenarioError(f"{where}: TopCAT refused the download: {resp.text}")

    def _scenario_user(self, raw: dict[str, Any], where: str):
        name = str(raw.get("user", ""))
        users = self.fac.store.users
        user = users.get(name) or users.get(f"simple/{name}")
        if user is None:
            raise ScenarioError(f"{where}.user: unknown user {name!r}")
        return user

    def _scenario_items(self, raw: dict[str, Any], where: str) -> list[tuple[str, int]]:
        store = self.fac.store
        out = []
        for j, item in enumerate(raw.get("items") or []):
            iwhere = f"{where}.items[{j}]"
            inv_name = item.get("investigation")
            inv = next((i for i in store.investigations.values() if i.name == inv_name), None)
            if inv is None:
                raise ScenarioError(f"{iwhere}: unknown investigation {inv_name!r}")
            if "dataset" not in item:
                out.append(("investigation", inv.id))
                continue
            ds = next((store.datasets[d] for d in inv.dataset_ids
                       if store.datasets[d].name == item["dataset"]), None)
            if ds is None:
                raise ScenarioError(f"{iwhere}: unknown dataset {item['dataset']!r}")
            if "datafile" not in item:
                out.append(("dataset", ds.id))
                continue
            df = next((store.datafiles[f] for f in ds.datafile_ids
                       if store.datafiles[f].name == item["datafile"]), None)
            if df is None:
                raise ScenarioError(f"{iwhere}: unknown datafile {item['datafile']!r}")
            out.append(("datafile", df.id))
        if not out:
            raise ScenarioError(f"{where}.items: a download needs at least one item")
        return out

    # ------------------------------------------------------------------ StatusCheck
    def _run(self) -> None:
        while not self._stop.wait(POLL_PERIOD_S):
            try:
                self.poll()
            except Exception:  # the poller must survive anything, like the EJB timer
                log.exception("StatusCheck poll failed")

    def poll(self) -> None:
        """One StatusCheck.poll() run over the selected downloads."""
        for d in self._selected():
            if self._stop.is_set():
                return
            if d.status == "PREPARING":
                if self._due(d.id):
                    self._prepare(d)
            elif time.time() - d.created_ts >= self.config.poll_delay_s and self._due(d.id):
                self._check(d)

    def _selected(self) -> list[Download]:
        """StatusCheck's JPQL selection of downloads that may need work."""
        with self.lock:
            return [d for d in self.downloads.values()
                    if not d.is_deleted and d.status != "EXPIRED" and (
                        d.status == "PREPARING"
                        or (d.status == "RESTORING" and d.transport in HTTP_TRANSPORTS)
                        or (d.email is not None and not d.is_email_sent))]

    def _due(self, download_id: int) -> bool:
        last = self._last_checks.get(download_id)
        return last is None or time.monotonic() - last >= self.config.poll_interval_wait_s

    def _mark_checked(self, download_id: int) -> None:
        self._last_checks[download_id] = time.monotonic()

    def _prepare(self, d: Download) -> None:
        try:
            prepared_id = self.ids(d.transport).prepare_data(d.session_id, d.selection())
        except RemoteError as exc:
            if exc.status == 404:
                log.info("download %s: prepareData 404, retrying: %s", d.id, exc.message)
                self._mark_checked(d.id)
            else:
                self._expire(d, f"prepareData {exc.status} {exc.message}")
            return
        except Unreachable as exc:
            self._expire(d, str(exc))
            return
        size = self._size(d.transport, d.session_id, d.selection())
        with self.lock:
            if d.status == "PREPARING" and not self._stop.is_set():
                self._finish_prepare(d, prepared_id, size)
        log.info("download %s prepared as %s -> %s", d.id, prepared_id, d.status)

    def _check(self, d: Download) -> None:
        """StatusCheck.performCheck: send a pending email, or poll isPrepared for http(s)."""
        self._mark_checked(d.id)
        with self.lock:
            send = d.status == "COMPLETE" and not d.is_email_sent
            if send:
                d.is_email_sent = True
        if send:
            self.send_email(d)
            return
        if d.transport not in HTTP_TRANSPORTS or not d.prepared_id:
            return
        try:
            ready = self.ids(d.transport).is_prepared(d.prepared_id)
        except RemoteError as exc:
            if exc.status != 404:
                self._expire(d, f"isPrepared {exc.status} {exc.message}")
            return
        except Unreachable:
            return
        if not ready:
            return
        with self.lock:
            if self._stop.is_set() or d.status in ("COMPLETE", "EXPIRED"):
                return
            d.status, d.completed_at = "COMPLETE", now()
            send = not d.is_email_sent
            d.is_email_sent = True
        if send:
            self.send_email(d)

    def _expire(self, d: Download, why: str) -> None:
        if self._stop.is_set():
            return
        with self.lock:
            d.status = "EXPIRED"
        log.warning("download %s EXPIRED: %s", d.id, why)


# ---------------------------------------------------------------------- item parsing
def _split_items(items: str) -> list[str]:
    return [p for p in re.split(r"\s*,\s*", items.strip()) if p]


def parse_items(items: str | None) -> list[tuple[str, int]]:
    """`investigation 2, dataset 5` -> pairs; Java-style 500s for what TopCAT cannot parse."""
    out = []
    for part in _split_items(items or ""):
        pair = part.split()
        if len(pair) < 2:
            raise TopcatError("InternalException",
                              "java.lang.ArrayIndexOutOfBoundsException "
                              "Index 1 out of bounds for length 1", 500)
        out.append((_entity_type(pair[0]), _parse_long(pair[1])))
    return out


def _item_matches(item: CartItem, part: str) -> bool:
    pair = part.split()
    if len(pair) > 1:
        return item.entity_type == _entity_type(pair[0]) and item.entity_id == _parse_long(
            pair[1])
    return item.id == _parse_long(pair[0])


def _entity_type(text: str) -> str:
    if text not in ENTITY_TYPES:
        raise TopcatError("InternalException",
                          "java.lang.IllegalArgumentException No enum constant "
                          f"org.icatproject.topcat.domain.EntityType.{text}", 500)
    return text


def _parse_long(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise TopcatError("InternalException", "java.lang.NumberFormatException "
                          f'For input string: "{text}"', 500) from None


def _unwrap(row: Any) -> dict[str, Any]:
    """`{"Datafile": {...}}` -> the entity."""
    if isinstance(row, dict) and len(row) == 1:
        (value,) = row.values()
        if isinstance(value, dict):
            return value
    return row if isinstance(row, dict) else {}
