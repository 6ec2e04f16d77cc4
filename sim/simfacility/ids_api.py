"""The simulated IDS (ids.server 2.1.1 wire semantics), mounted at ``/ids``.

Everything a client can observe follows wire reference §1: paths, methods, form vs query
parameters, text/plain vs JSON bodies, ``{"code","message"}`` errors, CORS headers, 204 for void
calls, 501 ``NOT_IMPLEMENTED`` for unknown paths, the mustZip rule, ZipMapper entry names,
Content-Disposition naming, ``Range: bytes=N-`` → 206 without Content-Range, and Content-Length
only for a single raw file fetched with a sessionId.

Choices where the reference says (inferred) or is silent:

- Validation order is the IDS's: UUID (400) → id-list syntax (400) → session (403) → entities
  (404/403) → single/two-level checks → data online (503) → deleted datafiles (404). The real IDS
  only notices a bad session when it calls ICAT; we check it on every session call, so an
  expired session with an empty selection gives 403 here (the real one might let it pass).
- Id lists are parsed as Java does: ``split("\\s*,\\s*")`` (trailing empty pieces dropped) and
  ``Long.parseLong`` per piece, so ``"1,2,"`` is valid and ``""`` or ``" 1"`` is not.
- Investigations: a missing one → 404 ``Investigation[id:N] not found.``, one the user cannot
  read → 403 ``READ access to this Investigation is not allowed.`` (the ICAT-side messages, as for
  datasets and datafiles). An investigation without datasets contributes nothing. A datafile
  asked for by id whose location is null → 404 ``Datafile N`` (DataSelection's own message);
  inside datasets/investigations such files are silently left out.
- The direct (sessionId) form orders zip entries and ``getDatafileIds`` ids in Java ``HashSet``
  iteration order (bucket of the spread ``Long.hashCode``, then insertion), the prepared form in
  ascending id (TreeSet).
- ``isPrepared`` checks every unit at once instead of stopping at the first offline one and
  finishing in a background thread; the answers and the restores queued are the same.
- Zip entries are stamped with the current local time (Java's default), so a resumed zip may
  not splice cleanly, exactly as with the real IDS.
- A wrong HTTP method on a known path → 500 ``InternalException`` ``class
  jakarta.ws.rs.NotAllowedException HTTP 405 Method Not Allowed`` (RuntimeExceptionMapper).
  OPTIONS on any path answers 200 with the CORS headers (Jersey's automatic OPTIONS).
- ``put`` and ``delete``: 501 ``This operation has been configured to be unavailable`` when
  read-only, otherwise 501 ``NotImplementedException`` ``<op> is not supported by the simulated
  IDS`` (they would need ICAT writes). ``write`` is implemented (a no-op once data is online).
  ``getApiVersion`` (removed in 2.0) and ``getLink`` fall through to the unknown-path 501.
- getServiceStatus lists restoring units as ``RESTORE_REQUESTED`` and the shared locks held by
  running getData streams.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from simfacility.errors import IcatError, IdsError
from simfacility.model import BLOCK_SIZE, Datafile, Dataset, Investigation
from simfacility.prepared import DfInfo, DsInfo, PreparedRecord
from simfacility.zipstream_writer import Entry, skip_bytes, zip_entry_name, zip_stream

if TYPE_CHECKING:
    from simfacility.facility import SimFacility

CHUNK = BLOCK_SIZE  # 1 MiB reads and writes: the throughput floor pollcat benchmarks rely on
UUID_RE = re.compile(r"^[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}$")
RANGE_RE = re.compile(r"bytes=(\d+)-")
LONG_RE = re.compile(r"[+-]?\d+")
CORS_HEADERS = [(b"access-control-allow-origin", b"*"),
                (b"access-control-allow-methods", b"GET, POST, DELETE, PUT"),
                (b"access-control-allow-headers", b"Content-Type")]
MSG_DS_OFFLINE = ("Before putting, getting or deleting a datafile, its dataset has to be "
                  "restored, restoration requested automatically")
MSG_DF_OFFLINE = ("Before getting a datafile, it must be restored, restoration requested "
                  "automatically")
MSG_UNAVAILABLE = "This operation has been configured to be unavailable"
MSG_SINGLE_LEVEL = "This operation is unavailable for single level storage"

Params = dict[str, str]


class StreamGauge:
    """How many getData bodies are streaming right now, and the most there ever were at once.

    Why: a facility's IDS is sized for so many simultaneous getData streams, and pollcat bounds
    the streams of all its workers together (a global concurrency limit per IDS). The simulator
    counts what it actually served so that a test can assert the bound held; the count covers
    a body from its first chunk until it is exhausted or the client went away.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active = 0
        self.peak = 0
        self.total = 0
        self.resumed: list[int] = []  # the Range offsets of bodies that did not start at 0
        self.datafiles: list[int] = []  # the datafile ids each body served, body by body

    def enter(self, offset: int = 0, datafile_ids: Iterable[int] = ()) -> None:
        with self._lock:
            self.active += 1
            self.total += 1
            self.peak = max(self.peak, self.active)
            if offset > 0:
                self.resumed.append(offset)
            self.datafiles.extend(datafile_ids)

    def leave(self) -> None:
        with self._lock:
            self.active -= 1

    def reset(self) -> None:
        """Forget the peak and total (the active count stays true)."""
        with self._lock:
            self.peak = self.active
            self.total = 0
            self.resumed = []
            self.datafiles = []

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"active": self.active, "peak": self.peak, "total": self.total,
                    "resumed": list(self.resumed), "datafiles": list(self.datafiles)}


# -- small wire helpers ------------------------------------------------------------------------

def text(body: str, status: int = 200) -> Response:
    """JAX-RS ``@Produces(TEXT_PLAIN)``: no charset suffix, unlike Starlette's default."""
    return Response(body, status_code=status, headers={"content-type": "text/plain"})


def no_content() -> Response:
    return Response(status_code=204)


def validate_uuid(name: str, value: str | None) -> str:
    if value is None or not UUID_RE.match(value):
        shown = "null" if value is None else value  # Java string concatenation of null
        raise IdsError("BadRequestException", f"The {name} parameter '{shown}' is not a valid UUID")
    return value


def parse_ids(name: str, value: str | None) -> list[int]:
    """``DataSelection.getValidIds``: Java split semantics, then ``Long.parseLong`` each piece."""
    if value is None:
        return []
    pieces = re.split(r"\s*,\s*", value)
    while len(pieces) > 1 and pieces[-1] == "":
        pieces.pop()  # Java's split drops trailing empty strings...
    if pieces == [""] and value != "":
        pieces = []  # ...and "," splits to nothing at all
    out = []
    for piece in pieces:
        if not LONG_RE.fullmatch(piece) or not -(2**63) <= int(piece) < 2**63:
            raise IdsError("BadRequestException",
                           f"The {name} parameter '{value}' is not a valid string representation"
                           " of a comma separated list of longs")
        out.append(int(piece))
    return out


def parse_bool(value: str | None) -> bool:
    return value is not None and value.lower() == "true"


def parse_offset(range_header: str | None) -> int:
    if range_header is None:
        return 0
    m = RANGE_RE.fullmatch(range_header)
    if m is None:
        raise IdsError("BadRequestException", f"The range must match {RANGE_RE.pattern}")
    return int(m.group(1))


def java_hash_order(ids: Iterable[int]) -> list[int]:
    """Iteration order of a Java ``HashSet<Long>`` filled with `ids` (default capacity 16)."""
    ids = list(dict.fromkeys(ids))
    cap = 16
    while len(ids) > cap * 0.75:
        cap *= 2

    def bucket(v: int) -> int:
        h = (v ^ (v >> 32)) & 0xFFFFFFFF
        return (h ^ (h >> 16)) & (cap - 1)

    return [v for _, _, v in sorted((bucket(v), i, v) for i, v in enumerate(ids))]


# -- selections --------------------------------------------------------------------------------

@dataclass
class IdParams:
    """The three id lists as sent; mustZip is decided on these, not on what they resolve to."""

    investigation_ids: list[int]
    dataset_ids: list[int]
    datafile_ids: list[int]

    @classmethod
    def parse(cls, p: Params) -> IdParams:
        dfs = parse_ids("datafileIds", p.get("datafileIds"))
        dss = parse_ids("datasetIds", p.get("datasetIds"))
        invs = parse_ids("investigationIds", p.get("investigationIds"))
        return cls(invs, dss, dfs)

    def must_zip(self) -> bool:
        n_df, n_ds = len(self.datafile_ids), len(self.dataset_ids)
        n_inv = len(self.investigation_ids)
        return n_df > 1 or n_ds > 0 or n_inv > 0 or (n_df + n_ds + n_inv) == 0

    def count(self) -> int:
        return len(self.datafile_ids) + len(self.dataset_ids) + len(self.investigation_ids)


@dataclass
class Resolved:
    """A selection resolved against the catalogue, in resolution (insertion) order."""

    datafiles: dict[int, Datafile] = field(default_factory=dict)
    datasets: dict[int, Dataset] = field(default_factory=dict)
    empty_datasets: list[int] = field(default_factory=list)


class Access:
    """What one user may read, computed once per request (the store's checks scan per call)."""

    def __init__(self, fac: SimFacility, user: str | None):
        store = fac.store
        self.all = user is None or store.is_admin(user)
        self.inv_ids = set() if self.all else store.user_investigation_ids(user)

    def investigation(self, inv_id: int) -> bool:
        return self.all or inv_id in self.inv_ids


# -- the service -------------------------------------------------------------------------------

class IdsService:
    """IdsBean: every call takes its parameters as a dict and returns a Starlette response."""

    def __init__(self, fac: SimFacility):
        self.fac = fac
        self.store = fac.store
        self.storage = fac.storage
        self.prepared = fac.prepared
        self.streams: StreamGauge = fac.ids_streams

    # ---- plain informational calls
    def ping(self, p: Params, headers: Any) -> Response:
        return text("IdsOK")

    def version(self, p: Params, headers: Any) -> Response:
        return JSONResponse({"version": self.fac.config.ids_version})

    def is_read_only(self, p: Params, headers: Any) -> Response:
        return text("true" if self.fac.config.ids_read_only else "false")

    def is_two_level(self, p: Params, headers: Any) -> Response:
        return text("true" if self.fac.two_level else "false")

    def get_icat_url(self, p: Params, headers: Any) -> Response:
        return text(self.fac.base_url or "")

    def get_service_status(self, p: Params, headers: Any) -> Response:
        """No UUID check here in IdsBean: the session goes straight to ICAT getUserName."""
        user = self._user(p.get("sessionId"))
        if user not in self.store.ids_root_user_names:
            raise IdsError("InsufficientPrivilegesException",
                           f"{user} is not included in the ids rootUserNames set.")
        if not self.fac.two_level:
            return JSONResponse({"opsQueue": [], "lockCount": 0, "locks": [], "failures": []})
        return JSONResponse(self.storage.service_status())

    # ---- session and selection plumbing
    def _user(self, sid: str | None) -> str:
        """ICAT SESSION errors become 403 InsufficientPrivilegesException with ICAT's message."""
        try:
            return self.fac.sessions.user_of(sid or "")
        except IcatError as exc:
            raise IdsError("InsufficientPrivilegesException", exc.message) from exc

    def _session_selection(self, p: Params, optional_session: bool = False
                           ) -> tuple[IdParams, Resolved]:
        sid = p.get("sessionId")
        if optional_session and sid is None:
            return self._selection_as(None, p)
        validate_uuid("sessionId", sid)
        ids = IdParams.parse(p)
        return ids, self._resolve(ids, self._user(sid))

    def _selection_as(self, user: str | None, p: Params) -> tuple[IdParams, Resolved]:
        ids = IdParams.parse(p)
        return ids, self._resolve(ids, user)

    def _resolve(self, ids: IdParams, user: str | None) -> Resolved:
        """DataSelection.resolveDatasetIds: datafiles, then datasets, then investigations."""
        if user is not None:
            self._icat_round_trips(ids)
        acc = Access(self.fac, user)
        out = Resolved()
        for dfid in ids.datafile_ids:
            self._add_datafile(out, acc, dfid)
        for dsid in ids.dataset_ids:
            self._add_dataset(out, self._readable_dataset(acc, dsid))
        for invid in ids.investigation_ids:
            inv = self._readable_investigation(acc, invid)
            for dsid in inv.dataset_ids:
                ds = self.store.datasets.get(dsid)
                if ds is not None:
                    self._add_dataset(out, ds)
        return out

    def _icat_round_trips(self, ids: IdParams) -> None:
        """Take the time the real IDS spends asking ICAT, as the caller, about the selection.

        DataSelection makes two ICAT calls per datafile id (a search for its dataset, then a
        get), one per dataset id, and per investigation one plus one per dataset (inferred
        from ids.server's DataSelection), synchronously, so prepareData and direct getData on
        large selections take time that grows with the selection.
        """
        per_call = self.fac.config.ids_icat_call_latency_s
        if per_call <= 0:
            return
        calls = 2 * len(ids.datafile_ids) + len(ids.dataset_ids)
        for invid in ids.investigation_ids:
            inv = self.store.investigations.get(invid)
            calls += 1 + (len(inv.dataset_ids) if inv else 0)
        time.sleep(per_call * calls)

    def _add_datafile(self, out: Resolved, acc: Access, dfid: int) -> None:
        df = self.store.datafiles.get(dfid)
        if df is None or df.deleted or df.dataset_id not in self.store.datasets:
            raise IdsError("NotFoundException", f"Datafile[id:{dfid}] not found.")
        ds = self.store.datasets[df.dataset_id]
        if not acc.investigation(ds.investigation_id):
            raise IdsError("InsufficientPrivilegesException",
                           "READ access to this Datafile is not allowed.")
        if df.location is None:
            raise IdsError("NotFoundException", f"Datafile {dfid}")
        out.datasets.setdefault(ds.id, ds)
        out.datafiles.setdefault(df.id, df)

    def _readable_dataset(self, acc: Access, dsid: int) -> Dataset:
        ds = self.store.datasets.get(dsid)
        if ds is None:
            raise IdsError("NotFoundException", f"Dataset[id:{dsid}] not found.")
        if not acc.investigation(ds.investigation_id):
            raise IdsError("InsufficientPrivilegesException",
                           "READ access to this Dataset is not allowed.")
        return ds

    def _readable_investigation(self, acc: Access, invid: int) -> Investigation:
        inv = self.store.investigations.get(invid)
        if inv is None:
            raise IdsError("NotFoundException", f"Investigation[id:{invid}] not found.")
        if not acc.investigation(inv.id):
            raise IdsError("InsufficientPrivilegesException",
                           "READ access to this Investigation is not allowed.")
        return inv

    def _add_dataset(self, out: Resolved, ds: Dataset) -> None:
        out.datasets.setdefault(ds.id, ds)
        empty = True
        for dfid in ds.datafile_ids:
            df = self.store.datafiles.get(dfid)
            if df is None or df.deleted:
                continue
            empty = False
            if df.location is not None:
                out.datafiles.setdefault(df.id, df)
        if empty:
            out.empty_datasets.append(ds.id)

    def _record(self, res: Resolved, zip_: bool, compress: bool) -> PreparedRecord:
        """Snapshot a resolution the way the IDS's prepared file does."""
        fac = self.store.facility
        dsinfos = {}
        for ds in res.datasets.values():
            inv = self.store.investigation_of(ds)
            dsinfos[ds.id] = DsInfo(ds.id, ds.name, ds.location, inv.id, inv.name, inv.visit_id,
                                    fac.id if fac else 0, fac.name if fac else "")
        dfs = [DfInfo(df.id, df.name, df.location or "", df.dataset_id, df.size)
               for df in res.datafiles.values()]
        return PreparedRecord(zip_, compress, dfs, dsinfos, list(res.empty_datasets))

    def _prepared(self, p: Params) -> PreparedRecord:
        return self.prepared.get(validate_uuid("preparedId", p.get("preparedId")))

    def _check_failures(self, dfs: list[DfInfo]) -> None:
        if self.storage.has_failed(dfs):
            raise IdsError("InternalException", "Restore failed")

    # ---- preparation and status
    def prepare_data(self, p: Params, headers: Any) -> Response:
        ids, res = self._session_selection(p)
        zip_ = parse_bool(p.get("zip")) or ids.must_zip()
        record = self._record(res, zip_, parse_bool(p.get("compress")))
        pid = self.prepared.create(record)
        if self.fac.two_level:
            self.storage.clear_failures(record.datafiles)
            self.storage.request_restore(record.datafiles)
        return text(pid)

    def is_prepared(self, p: Params, headers: Any) -> Response:
        record = self._prepared(p)
        if not self.fac.two_level:
            return text("true")
        self._check_failures(record.datafiles)
        offline = self.storage.offline_units(record.datafiles)
        if offline:
            self.storage.restore_units(offline)
            return text("false")
        return text("true")

    def get_status(self, p: Params, headers: Any) -> Response:
        if "preparedId" in p:
            dfs = self._prepared(p).datafiles
        else:
            _, res = self._session_selection(p, optional_session=True)
            dfs = list(res.datafiles.values())
        if not self.fac.two_level:
            return text("ONLINE")
        self._check_failures(dfs)
        return text(self.storage.status(dfs))

    def get_size(self, p: Params, headers: Any) -> Response:
        if "preparedId" in p:
            record = self._prepared(p)
            return text(str(self._current_size(d.id for d in record.datafiles)))
        validate_uuid("sessionId", p.get("sessionId"))
        ids = IdParams.parse(p)
        user = self._user(p.get("sessionId"))
        if ids.count() == 1:
            try:  # the IDS's SUM fast path: any ICAT error on the existence check → 404
                res = self._resolve(ids, user)
            except IdsError as exc:
                raise IdsError("NotFoundException", exc.message) from exc
        else:
            res = self._resolve(ids, user)
        return text(str(sum(df.file_size for df in res.datafiles.values())))

    def _current_size(self, dfids: Iterable[int]) -> int:
        """Sum of ICAT fileSize now: datafiles deleted since preparation no longer count."""
        total = 0
        for dfid in dfids:
            df = self.store.datafiles.get(dfid)
            if df is not None and not df.deleted:
                total += df.file_size
        return total

    def get_datafile_ids(self, p: Params, headers: Any) -> Response:
        if "preparedId" in p:
            r = self._prepared(p)
            return JSONResponse({"zip": r.zip, "compress": r.compress, "ids": r.datafile_ids})
        _, res = self._session_selection(p)
        return JSONResponse({"ids": java_hash_order(res.datafiles)})

    # ---- storage operations
    def _two_level_selection(self, p: Params) -> Resolved:
        validate_uuid("sessionId", p.get("sessionId"))
        if not self.fac.two_level:
            raise IdsError("NotImplementedException", MSG_SINGLE_LEVEL)
        ids = IdParams.parse(p)
        return self._resolve(ids, self._user(p.get("sessionId")))

    def archive(self, p: Params, headers: Any) -> Response:
        res = self._two_level_selection(p)
        self.storage.archive(list(res.datafiles.values()))
        return no_content()

    def restore(self, p: Params, headers: Any) -> Response:
        res = self._two_level_selection(p)
        self.storage.request_restore(list(res.datafiles.values()))
        return no_content()

    def write(self, p: Params, headers: Any) -> Response:
        validate_uuid("sessionId", p.get("sessionId"))
        if self.fac.config.ids_read_only:
            raise IdsError("NotImplementedException", MSG_UNAVAILABLE)
        res = self._two_level_selection(p)
        self._require_online(list(res.datafiles.values()))
        return no_content()

    def reset(self, p: Params, headers: Any) -> Response:
        if "preparedId" in p:
            dfs: list[Any] = self._prepared(p).datafiles
        else:
            _, res = self._session_selection(p)
            dfs = list(res.datafiles.values())
        self.storage.clear_failures(dfs)
        return no_content()

    def put(self, p: Params, headers: Any) -> Response:
        return self._unsupported("put")

    def delete(self, p: Params, headers: Any) -> Response:
        return self._unsupported("delete")

    def _unsupported(self, op: str) -> Response:
        if self.fac.config.ids_read_only:
            raise IdsError("NotImplementedException", MSG_UNAVAILABLE)
        raise IdsError("NotImplementedException", f"{op} is not supported by the simulated IDS")

    # ---- getData
    def get_data(self, p: Params, headers: Any) -> Response:
        offset = parse_offset(headers.get("range"))
        if "preparedId" in p:
            record = self._prepared(p)
            return self._serve(record, offset, p.get("outname"), direct=False)
        ids, res = self._session_selection(p)
        zip_ = parse_bool(p.get("zip")) or ids.must_zip()
        record = self._record(res, zip_, parse_bool(p.get("compress")))
        order = {dfid: i for i, dfid in enumerate(java_hash_order(res.datafiles))}
        record.datafiles.sort(key=lambda d: order[d.id])
        return self._serve(record, offset, p.get("outname"), direct=True)

    def _require_online(self, dfs: list[Any]) -> None:
        offline = self.storage.offline_units(dfs)
        if offline:
            self.storage.restore_units(offline)
            msg = MSG_DS_OFFLINE if self.storage.by_dataset else MSG_DF_OFFLINE
            raise IdsError("DataNotOnlineException", msg)

    def _serve(self, record: PreparedRecord, offset: int, outname: str | None,
               direct: bool) -> Response:
        if self.fac.two_level:
            self._require_online(record.datafiles)
        live = [self.store.datafiles.get(d.id) for d in record.datafiles]
        if any(df is None or df.deleted for df in live):
            raise IdsError("NotFoundException", "One of the datafiles requested has been deleted")
        headers = {"Accept-Ranges": "bytes"}
        if record.zip:
            name = zip_name(outname)
            body = zip_stream(self._entries(record), record.compress)
            if offset:
                body = skip_bytes(body, offset)
        else:
            df = live[0]
            name = outname if outname is not None else df.name
            body = file_chunks(self.store, df, offset)
            if direct:
                # IdsBean: DataSelection.getFileLength() sums ICAT's fileSize, not the disk
                length = max(0, df.file_size - offset)
                headers["Content-Length"] = str(length)
                body = clip(body, length)
        headers["Content-Disposition"] = grizzly_header(f'attachment; filename="{name}"')
        body = self._counted(self._locked(body, list(record.datasets)), offset,
                             [d.id for d in record.datafiles])
        return StreamingResponse(prefetch(body), status_code=206 if offset > 0 else 200,
                                 headers=headers, media_type="application/octet-stream")

    def _entries(self, record: PreparedRecord) -> Iterator[Entry]:
        for d in record.datafiles:
            ds = record.datasets[d.dataset_id]
            df = self.store.datafiles[d.id]
            name = zip_entry_name(ds.facility_name, ds.investigation_name, ds.visit_id, ds.name,
                                  d.name)
            yield name, (lambda df=df: file_chunks(self.store, df, 0))

    def _locked(self, body: Iterator[bytes], dataset_ids: list[int]) -> Iterator[bytes]:
        """Hold SHARED dataset locks while streaming; taken on the first chunk so a response
        that is never started cannot leak them."""
        self.storage.lock_shared(dataset_ids)
        try:
            yield from body
        finally:
            self.storage.unlock_shared(dataset_ids)


    def _counted(self, body: Iterator[bytes], offset: int,
                 datafile_ids: list[int]) -> Iterator[bytes]:
        """Count the stream from its first chunk until the body ends or is closed (the
        read-ahead in `prefetch` ends it while the last chunk is still being sent)."""
        self.streams.enter(offset, datafile_ids)
        try:
            yield from body
        finally:
            self.streams.leave()


def zip_name(outname: str | None) -> str:
    """Content-Disposition for zips: server local time, or outname with ``.zip`` ensured."""
    if outname is None:
        return time.strftime("%Y-%m-%d_%H-%M-%S") + ".zip"
    dot = outname.rfind(".")
    if dot >= 0 and outname[dot + 1:] == "zip":
        return outname
    return outname + ".zip"


def grizzly_header(value: str) -> str:
    """A header value as Payara's Grizzly writes it: char by char, with every character that is
    not printable US-ASCII (tab allowed) sent as a space (`HttpCodecUtils.put`, inferred from
    grizzly f481d051). So a Cyrillic or Polish datafile name arrives blanked, never refused.
    """
    return "".join(c if c == "\t" or " " <= c <= "~" else " " for c in value)


def clip(chunks: Iterator[bytes], length: int) -> Iterator[bytes]:
    """At most `length` bytes of `chunks`: the declared Content-Length (ICAT's fileSize) wins.

    When the file on disk is longer, the client gets a complete-looking response that is cut
    short; when it is shorter, the body simply ends early and the server closes the connection
    with fewer bytes than promised, as a Java container does.
    """
    left = length
    try:
        for chunk in chunks:
            if left <= 0:
                return
            piece = chunk[:left]
            left -= len(piece)
            yield piece
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def file_chunks(store: Any, df: Datafile, offset: int) -> Iterator[bytes]:
    """Stream a datafile from main storage in 1 MiB reads.

    Falls back to the generated content if the file is not on disk (archived between the online
    check and the first read, or a single-level scenario built without materialising).
    """
    try:
        fh = open(store.path_of(df), "rb")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        yield from df.iter_bytes(offset, CHUNK)
        return
    with fh:
        if offset:
            fh.seek(offset)
        while chunk := fh.read(CHUNK):
            yield chunk


_END = object()


async def prefetch(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Produce chunk N+1 in a worker thread while chunk N is being sent.

    Why: uvicorn waits for its write buffer to drain before taking the next chunk, so without
    read-ahead the socket idles during every 1 MiB read (and every deflate of a zip piece).
    If the client goes away, the iterator is closed once its in-flight read has finished (a
    generator cannot be closed while another thread runs it), which releases its locks/files.
    The lock orders the two: the cancelled await returns at once while its thread still runs
    the generator, so waiting for the awaited task would close it mid-`next`.
    """
    running = threading.Lock()

    def step() -> Any:
        with running:
            return next(chunks, _END)

    def close() -> None:
        with running:
            chunks.close()

    pending = asyncio.ensure_future(run_in_threadpool(step))
    try:
        while True:
            chunk = await pending
            if chunk is _END:
                return
            pending = asyncio.ensure_future(run_in_threadpool(step))
            yield chunk
    finally:
        pending.cancel()
        threading.Thread(target=close, name="prefetch-close", daemon=True).start()


# -- ASGI plumbing -----------------------------------------------------------------------------

async def _params(request: Request, form: bool) -> Params:
    """First value of each parameter, blank values kept (``datasetIds=`` must give 400).

    POST endpoints read only the form body and the others only the query string, as JAX-RS
    ``@FormParam`` / ``@QueryParam`` do.
    """
    if form:
        ctype = request.headers.get("content-type", "")
        raw = (await request.body()).decode("utf-8", "replace") \
            if "application/x-www-form-urlencoded" in ctype else ""
    else:
        raw = request.url.query
    out: Params = {}
    for k, v in parse_qsl(raw, keep_blank_values=True):
        out.setdefault(k, v)
    return out


def _endpoint(fn: Callable[[Params, Any], Response], form: bool = False):
    """Wrap a sync IdsService method: parse params, run it off the event loop, map errors."""
    async def handler(request: Request) -> Response:
        params = await _params(request, form)
        try:
            return await run_in_threadpool(fn, params, request.headers)
        except IdsError as exc:
            return exc.response()
    return handler


def _ids_error(code: str, message: str, status: int) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Unknown path → 501 NOT_IMPLEMENTED; wrong method → RuntimeExceptionMapper's 500."""
    status = getattr(exc, "status_code", 500)
    if status == 404:
        return _ids_error("NOT_IMPLEMENTED", "Operation not implemented by this IDS server.", 501)
    if status == 405:
        return _ids_error("InternalException",
                          "class jakarta.ws.rs.NotAllowedException HTTP 405 Method Not Allowed",
                          500)
    return _ids_error("InternalException", f"class jakarta.ws.rs.WebApplicationException "
                                           f"HTTP {status}", 500)


async def _internal_error(request: Request, exc: Exception) -> Response:
    return _ids_error("InternalException", f"class {type(exc).__name__} {exc}", 500)


class CorsMiddleware:
    """CORSResponseFilter: three headers on every response; OPTIONS answered directly."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["method"] == "OPTIONS":
            resp = Response(status_code=200, headers={"Allow": "GET, POST, DELETE, PUT, OPTIONS"})
            return await resp(scope, receive, self._wrap(send))
        return await self.app(scope, receive, self._wrap(send))

    @staticmethod
    def _wrap(send):
        async def wrapped(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + CORS_HEADERS}
            await send(message)
        return wrapped


def build(fac: SimFacility) -> Starlette:
    """The IDS app for ``Mount("/ids", ...)``."""
    s = IdsService(fac)
    get, post = ["GET"], ["POST"]
    routes = [
        Route("/ping", _endpoint(s.ping), methods=get),
        Route("/version", _endpoint(s.version), methods=get),
        Route("/isReadOnly", _endpoint(s.is_read_only), methods=get),
        Route("/isTwoLevel", _endpoint(s.is_two_level), methods=get),
        Route("/getIcatUrl", _endpoint(s.get_icat_url), methods=get),
        Route("/getServiceStatus", _endpoint(s.get_service_status), methods=get),
        Route("/prepareData", _endpoint(s.prepare_data, form=True), methods=post),
        Route("/isPrepared", _endpoint(s.is_prepared), methods=get),
        Route("/getData", _endpoint(s.get_data), methods=get),
        Route("/getStatus", _endpoint(s.get_status), methods=get),
        Route("/getSize", _endpoint(s.get_size), methods=get),
        Route("/getDatafileIds", _endpoint(s.get_datafile_ids), methods=get),
        Route("/archive", _endpoint(s.archive, form=True), methods=post),
        Route("/restore", _endpoint(s.restore, form=True), methods=post),
        Route("/write", _endpoint(s.write, form=True), methods=post),
        Route("/reset", _endpoint(s.reset, form=True), methods=post),
        Route("/delete", _endpoint(s.delete), methods=["DELETE"]),
        Route("/put", _endpoint(s.put), methods=["PUT"]),
        Route("/put", _endpoint(s.put, form=True), methods=post),
    ]
    handlers: dict[Any, Callable] = {HTTPException: _http_exception, Exception: _internal_error}
    return Starlette(routes=routes, exception_handlers=handlers,
                     middleware=[Middleware(CorsMiddleware)])


__all__ = ["build", "IdsService", "StreamGauge", "java_hash_order", "parse_ids", "zip_name"]
