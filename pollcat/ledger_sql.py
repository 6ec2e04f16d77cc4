"""pollcat's ledger and per-download ownership in a SQL database, for workers on several hosts.

`StateStore` (`pollcat.state`) keeps the ledger as JSON files and the lock as an `flock` in a
local state dir: right for one host, wrong for many, where each host would believe it owns a
download. `SqlStateStore` has the same interface on SQLAlchemy 2 Core:

- an **SQLite file** (`sqlite:////var/lib/pollcat/ledger.db`) is the embedded default for one
  host and several processes: WAL mode so readers never wait for the writer, a busy timeout so
  writers queue instead of failing, and every write in `BEGIN IMMEDIATE` (the write lock is taken
  at the start, so a read-modify-write can never be overtaken by another process);
- a **PostgreSQL URL** (`postgresql+psycopg://user:pw@db/pollcat`) serves many hosts: every
  read-modify-write reads its row with `SELECT ... FOR UPDATE` in the same transaction.

The lock becomes a **lease**: a row naming its owner (host, pid and a random token) and an expiry
on the *database's* clock (so hosts with skewed clocks still agree on when a lease is over). It is
taken in one atomic upsert that only overwrites an expired row, renewed by a background thread
every third of its duration while the `with` body runs, and deleted at exit. A worker that dies
(even by SIGKILL) leaves its row behind; once it expires, another worker takes the download over.
The claim on the target (`pollcat.claim`) stays as the second, independent guard.

Tables (created when missing; all keyed by facility, so facilities can share one database):

- `pollcat_facility` – the facility's `first_run` (older COMPLETE downloads are not ours);
- `pollcat_scan_bound` – per discovery query, the download id below which nothing is left to
  find (single-level discovery asks TopCAT for newer COMPLETE downloads only);
- `pollcat_ledger` – one row per download: the `LedgerRecord` as one JSON document (`record`),
  so a new ledger field needs no schema change, plus `verdict` and `updated` copied out of it
  for operators' queries (`SELECT ... WHERE verdict IS NULL`);
- `pollcat_prepared_id` – the preparedId pollcat made itself. It is a bearer token for the data,
  which is why it is a table apart and never in the ledger: whoever can read this table can
  download the data, so **the database must be protected like a secret store** (a SQLite file is
  created mode 0600; a PostgreSQL role for pollcat alone, TLS, no read access for reporting);
- `pollcat_lease` – who owns which download until when (a row exists only while owned);
- `pollcat_marker` – one-off facts, such as "the JSON ledgers were imported".
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import os
import re
import socket
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import FunctionElement

from pollcat.errors import ConfigurationError
from pollcat.state import LedgerRecord, now_iso

log = logging.getLogger("pollcat.ledger_sql")

_FACILITY = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")  # as pollcat.state: it names a directory too
DEFAULT_LEASE_SECONDS = 60.0
SQLITE_BUSY_SECONDS = 30.0
JSON_IMPORT_MARKER = "json-ledgers-imported"

# ------------------------------------------------------------------------------------- schema
metadata = sa.MetaData()
_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

facilities = sa.Table(
    "pollcat_facility", metadata,
    sa.Column("facility", sa.String(64), primary_key=True),
    sa.Column("first_run", sa.String(40), nullable=False),
)
ledger = sa.Table(
    "pollcat_ledger", metadata,
    sa.Column("facility", sa.String(64), primary_key=True),
    sa.Column("download_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("verdict", sa.String(32), nullable=True),
    sa.Column("updated", sa.String(40), nullable=False),
    sa.Column("record", _JSON, nullable=False),
)
prepared_ids = sa.Table(
    "pollcat_prepared_id", metadata,
    sa.Column("facility", sa.String(64), primary_key=True),
    sa.Column("download_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("prepared_id", sa.Text, nullable=False),
    sa.Column("stored_at", sa.String(40), nullable=False),
)
leases = sa.Table(
    "pollcat_lease", metadata,
    sa.Column("facility", sa.String(64), primary_key=True),
    sa.Column("download_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("owner", sa.String(200), nullable=False),
    sa.Column("acquired_at", sa.Double, nullable=False),  # seconds since the epoch, DB clock
    sa.Column("expires_at", sa.Double, nullable=False),
)
markers = sa.Table(
    "pollcat_marker", metadata,
    sa.Column("facility", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("done_at", sa.String(40), nullable=False),
)
scan_bounds = sa.Table(
    "pollcat_scan_bound", metadata,
    sa.Column("facility", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("after_id", sa.BigInteger, nullable=False),
)
_SCHEMA_LOCK_KEY = 0x706F6C6C636174  # PostgreSQL advisory lock taken while creating tables


class db_now(FunctionElement):
    """The database server's clock in seconds since the epoch: one clock for every host."""

    type = sa.Double()
    inherit_cache = True
    name = "db_now"


@compiles(db_now, "sqlite")
def _db_now_sqlite(element: db_now, compiler: Any, **kw: Any) -> str:
    return "((julianday('now') - 2440587.5) * 86400.0)"


@compiles(db_now, "postgresql")
def _db_now_postgresql(element: db_now, compiler: Any, **kw: Any) -> str:
    return "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"


# ------------------------------------------------------------------------------------- engine
def sqlite_url(path: str | os.PathLike[str]) -> str:
    """The URL of an SQLite ledger file (e.g. next to the JSON state dir)."""
    return f"sqlite:///{Path(path).resolve()}"


_ENGINES: dict[tuple[int, str], Engine] = {}
_ENGINES_LOCK = threading.Lock()


def _shared_engine(url: str) -> Engine:
    """One engine (one connection pool) per URL and process: a worker opens a store per flow
    run, and a pool per store would multiply the connections each host holds on the server."""
    key = (os.getpid(), url)  # a forked child must not reuse its parent's connections
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = _ENGINES[key] = _engine(url)
        return engine


def _engine(url: str) -> Engine:
    """An engine set up for pollcat's transactions on SQLite or PostgreSQL; nothing else."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:  # not the parser's message: it quotes the URL, password and all
        raise ConfigurationError("the ledger URL is not a database URL") from None
    backend = parsed.get_backend_name()
    if backend == "postgres":
        backend = "postgresql"
    if backend == "postgresql":
        if parsed.drivername in ("postgresql", "postgres"):  # psycopg (v3) is what is installed
            parsed = parsed.set(drivername="postgresql+psycopg")
        try:
            return sa.create_engine(parsed, pool_pre_ping=True, isolation_level="READ COMMITTED",
                                    pool_size=4, max_overflow=16)
        except (ImportError, sa.exc.NoSuchModuleError) as exc:
            raise ConfigurationError(f"no driver for {parsed.drivername}: {exc} (psycopg comes "
                                     "with the sql extra: pip install 'pollcat[sql]')") from None
    if backend == "sqlite":
        return _sqlite_engine(parsed)
    raise ConfigurationError(f"the ledger needs SQLite or PostgreSQL, not {backend!r} "
                             f"({parsed.render_as_string(hide_password=True)})")


def _switch_to_wal_once(path: Path) -> None:
    """Put a fresh SQLite file in WAL mode, one process at a time.

    The switch needs an exclusive lock, and in the rollback-journal mode a new file starts in,
    a process switching while another creates the tables deadlocks: SQLite then answers
    "database is locked" at once instead of waiting. WAL is a property of the file, so once it
    is set every later connection's switch is a no-op; the file lock makes the first one
    happen alone."""
    lock = os.open(f"{path}.init-lock", os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        conn = sqlite3.connect(path, timeout=SQLITE_BUSY_SECONDS)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
        finally:
            conn.close()
    finally:
        os.close(lock)


def _sqlite_engine(parsed: sa.URL) -> Engine:
    """WAL, a busy timeout and explicit BEGINs (pysqlite's own transaction handling would begin
    lazily, DEFERRED, and a deferred reader that later writes fails at once under contention)."""
    if not parsed.database or parsed.database == ":memory:" or parsed.database.startswith("file:"):
        raise ConfigurationError("an SQLite ledger must be a file path (sqlite:////abs/path.db), "
                                 "shared by the processes on this host")
    path = Path(parsed.database).resolve()  # errors name the real file
    parsed = parsed.set(database=str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))  # holds secrets: never readable
        _switch_to_wal_once(path)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigurationError(f"cannot use the ledger file {path}: {exc}") from exc
    engine = sa.create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_SECONDS})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_SECONDS * 1000)}")
        cur.execute("PRAGMA journal_mode = WAL")
        # WAL + NORMAL: a power cut may lose the last commits but never corrupts the file; the
        # manifest on the target, not the ledger, is the proof of a delivery.
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("pollcat_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


# ------------------------------------------------------------------------------------- the store
@dataclass(frozen=True)
class Lease:
    """Who holds a download, and for how much longer (by the database's clock)."""

    owner: str
    expires_in: float


def default_owner() -> str:
    """host:pid:random – unique per process, and says where to look when a lease looks stuck."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class SqlStateStore:
    """The `StateStore` interface on a SQL database shared by processes and hosts."""

    def __init__(self, url: str, facility: str, *, owner: str | None = None,
                 lease_seconds: float = DEFAULT_LEASE_SECONDS):
        if not _FACILITY.match(facility):
            raise ConfigurationError(f"facility name {facility!r} is not usable as a key")
        if lease_seconds <= 0:
            raise ConfigurationError("lease_seconds must be positive")
        self.facility = facility
        self.owner = owner or default_owner()
        if len(self.owner) > 160:
            raise ConfigurationError("a lease owner name is at most 160 characters")
        self._acquisitions = itertools.count(1)
        self.lease_seconds = float(lease_seconds)
        self.engine = _shared_engine(url)
        self.dialect = self.engine.dialect.name
        try:
            self._create_schema()
            self.first_run = self._first_run()
        except sa.exc.OperationalError as exc:
            self.engine.dispose()
            raise ConfigurationError(f"cannot use the ledger database "
                                     f"{self.engine.url.render_as_string(hide_password=True)}: "
                                     f"{exc.orig}") from None

    def close(self) -> None:
        """Close the idle pooled connections of this URL (shared by the process's stores; any
        of them reconnects when next used)."""
        self.engine.dispose()

    # ------------------------------------------------------------ plumbing
    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        """A transaction that may write: on SQLite it holds the database's write lock from its
        first statement, so a read-modify-write inside it is never interleaved with another."""
        with self.engine.connect() as conn:
            if self.dialect == "sqlite":
                conn.execution_options(pollcat_begin="IMMEDIATE")
            with conn.begin():
                yield conn

    def _insert(self, table: sa.Table) -> Any:
        """INSERT with ON CONFLICT support, in this database's dialect."""
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    def _key(self, table: sa.Table, download_id: int) -> sa.ColumnElement[bool]:
        return sa.and_(table.c.facility == self.facility,
                       table.c.download_id == int(download_id))

    def _create_schema(self) -> None:
        """Create missing tables; serialised, since several workers may start at once."""
        with self._write() as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_SCHEMA_LOCK_KEY)))
            metadata.create_all(conn)

    def _first_run(self) -> datetime:
        """When pollcat first swept this facility (the first writer's clock wins)."""
        with self._write() as conn:
            conn.execute(self._insert(facilities)
                         .values(facility=self.facility, first_run=now_iso())
                         .on_conflict_do_nothing(index_elements=["facility"]))
            value = conn.execute(sa.select(facilities.c.first_run)
                                 .where(facilities.c.facility == self.facility)).scalar_one()
        return datetime.fromisoformat(value)

    # ------------------------------------------------------------ the ledger
    @staticmethod
    def _record(download_id: int, raw: Any) -> LedgerRecord:
        try:
            return LedgerRecord.from_json({**(raw or {}), "download_id": int(download_id)})
        except (ValueError, TypeError):  # as StateStore does with a damaged file
            return LedgerRecord(download_id=int(download_id))

    def get(self, download_id: int) -> LedgerRecord:
        """The record; an empty one (not stored) for a download never seen."""
        with self.engine.connect() as conn:
            raw = conn.execute(sa.select(ledger.c.record)
                               .where(self._key(ledger, download_id))).scalar_one_or_none()
        return self._record(download_id, raw)

    def update(self, download_id: int, **fields: Any) -> LedgerRecord:
        """Change some fields; read, change and write in one locked transaction, so concurrent
        writers from other processes or hosts never lose each other's changes.

        A value may be a function of the current record, evaluated inside that transaction:
        `update(id, prepare_attempts=lambda r: r.prepare_attempts + 1)` is an atomic increment
        where `get` then `update` would let two hosts both write the same count."""
        known = set(LedgerRecord.__dataclass_fields__)
        for key in fields:
            if key not in known:
                raise AttributeError(f"the ledger has no field {key!r}")
        download_id = int(download_id)
        with self._write() as conn:
            # An empty placeholder first, so that there is a row to lock even on first sight
            # (two first writers then queue on it instead of one failing on a duplicate key).
            conn.execute(self._insert(ledger)
                         .values(facility=self.facility, download_id=download_id,
                                 verdict=None, updated="", record={})
                         .on_conflict_do_nothing(index_elements=["facility", "download_id"]))
            raw = conn.execute(sa.select(ledger.c.record)
                               .where(self._key(ledger, download_id))
                               .with_for_update()).scalar_one()
            rec = self._record(download_id, raw)
            for key, value in fields.items():
                setattr(rec, key, value(rec) if callable(value) else value)
            rec.first_seen = rec.first_seen or now_iso()
            rec.updated = now_iso()
            doc = rec.to_json()
            conn.execute(sa.update(ledger).where(self._key(ledger, download_id))
                         .values(record=doc, verdict=doc["verdict"], updated=rec.updated))
        return rec

    def seen(self, download_id: int) -> LedgerRecord:
        """The record, created on first sight."""
        rec = self.get(download_id)
        return rec if rec.first_seen else self.update(download_id)

    def records(self) -> Iterator[LedgerRecord]:
        """Every stored record, by download id (read at once: the caller may write meanwhile)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(ledger.c.download_id, ledger.c.record)
                                .where(ledger.c.facility == self.facility)
                                .order_by(ledger.c.download_id)).all()
        for download_id, raw in rows:
            if raw:
                yield self._record(download_id, raw)

    # ------------------------------------------------------------ discovery bounds
    def scan_bound(self, name: str) -> int | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(scan_bounds.c.after_id).where(
                scan_bounds.c.facility == self.facility,
                scan_bounds.c.name == name[:200])).scalar()

    def raise_scan_bound(self, name: str, after_id: int) -> None:
        """Up only, in one statement: concurrent sweeps on several hosts keep the highest."""
        key = {"facility": self.facility, "name": name[:200]}
        stmt = self._insert(scan_bounds).values(**key, after_id=int(after_id))
        stmt = stmt.on_conflict_do_update(
            index_elements=[scan_bounds.c.facility, scan_bounds.c.name],
            set_={"after_id": int(after_id)},
            where=scan_bounds.c.after_id < int(after_id))
        with self._write() as conn:
            conn.execute(stmt)

    # ------------------------------------------------------------ the preparedId pollcat made
    def own_prepared_id(self, download_id: int) -> str | None:
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(prepared_ids.c.prepared_id)
                                 .where(self._key(prepared_ids, download_id))).scalar()
        return (value or "").strip() or None

    def keep_prepared_id(self, download_id: int, prepared_id: str) -> None:
        stmt = self._insert(prepared_ids).values(facility=self.facility,
                                                 download_id=int(download_id),
                                                 prepared_id=prepared_id, stored_at=now_iso())
        stmt = stmt.on_conflict_do_update(
            index_elements=["facility", "download_id"],
            set_={"prepared_id": stmt.excluded.prepared_id, "stored_at": stmt.excluded.stored_at})
        with self._write() as conn:
            conn.execute(stmt)

    # ------------------------------------------------------------ the lease
    @contextlib.contextmanager
    def lock(self, download_id: int) -> Iterator[bool]:
        """Yields True while this store holds the download's lease, False if a live owner does
        (this store included: a second `lock` on a held download is refused, as with flock)."""
        download_id = int(download_id)
        token = f"{self.owner}#{next(self._acquisitions)}"  # this acquisition, not just us
        if not self._acquire(download_id, token):
            yield False
            return
        renewer = _Renewer(self, download_id, token)
        renewer.start()
        try:
            yield True
        finally:
            renewer.stop()
            self._release(download_id, token)

    def holds(self, download_id: int) -> bool:
        """Whether this store still holds the lease (worth asking before an irreversible step:
        a worker stalled past its expiry may have lost the download to another)."""
        lease = self.lease(download_id)
        return (lease is not None and lease.owner.startswith(f"{self.owner}#")
                and lease.expires_in > 0)

    def lease(self, download_id: int) -> Lease | None:
        """The download's lease row, live or expired; None when nobody holds it."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(leases.c.owner, leases.c.expires_at - db_now())
                               .where(self._key(leases, download_id))).first()
        return Lease(owner=row[0], expires_in=float(row[1])) if row else None

    def _acquire(self, download_id: int, token: str) -> bool:
        """One atomic upsert: insert the lease, or overwrite the row only if it has expired."""
        stmt = self._insert(leases).values(
            facility=self.facility, download_id=download_id, owner=token,
            acquired_at=db_now(), expires_at=db_now() + self.lease_seconds)
        stmt = stmt.on_conflict_do_update(
            index_elements=["facility", "download_id"],
            set_={"owner": stmt.excluded.owner, "acquired_at": stmt.excluded.acquired_at,
                  "expires_at": stmt.excluded.expires_at},
            where=leases.c.expires_at < db_now())
        with self._write() as conn:
            conn.execute(stmt)
            holder = conn.execute(sa.select(leases.c.owner)
                                  .where(self._key(leases, download_id))).scalar_one()
        if holder == token:
            log.debug("lease on download %s taken by %s", download_id, token)
        return holder == token

    def _renew(self, download_id: int, token: str) -> bool:
        """Push the expiry on; False when the row is no longer ours (taken over)."""
        with self._write() as conn:
            done = conn.execute(sa.update(leases)
                                .where(self._key(leases, download_id),
                                       leases.c.owner == token)
                                .values(expires_at=db_now() + self.lease_seconds))
        return done.rowcount == 1

    def _release(self, download_id: int, token: str) -> None:
        try:
            with self._write() as conn:
                conn.execute(sa.delete(leases).where(self._key(leases, download_id),
                                                     leases.c.owner == token))
        except sa.exc.DBAPIError as exc:  # it expires by itself; nothing is lost
            log.warning("could not release the lease on download %s (%s); it expires in %.0fs",
                        download_id, type(exc.orig).__name__, self.lease_seconds)


class _Renewer(threading.Thread):
    """Renews one lease every third of its duration until stopped.

    A failed renewal (database briefly unreachable) is retried at the next tick: the lease only
    goes once two more ticks have failed. A lease found taken over is given up and logged; the
    holder can check `SqlStateStore.holds()` before an irreversible step."""

    def __init__(self, store: SqlStateStore, download_id: int, token: str):
        super().__init__(name=f"pollcat-lease-{download_id}", daemon=True)
        self.store, self.download_id, self.token = store, download_id, token
        self._stop_event = threading.Event()

    def run(self) -> None:
        interval = self.store.lease_seconds / 3
        while not self._stop_event.wait(interval):
            try:
                if not self.store._renew(self.download_id, self.token):
                    log.warning("lease on download %s lost to another owner (it expired "
                                "before it was renewed)", self.download_id)
                    return
            except sa.exc.DBAPIError as exc:
                log.warning("could not renew the lease on download %s: %s", self.download_id,
                            type(exc.orig).__name__)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=max(5.0, self.store.lease_seconds))


# ------------------------------------------------------------------------------------- migration
@dataclass(frozen=True)
class ImportReport:
    """What `import_json_ledgers` did (all zero when it had already run)."""

    records: int = 0
    prepared_ids: int = 0
    already_done: bool = False


def import_json_ledgers(state_dir: str | os.PathLike[str], facility: str,
                        store: SqlStateStore) -> ImportReport:
    """Copy a facility's JSON ledgers, own preparedIds and first-run date into the database.

    Runs once per facility and database (a marker row, taken first in the same transaction,
    makes a second or concurrent call a no-op). A row already in the database is newer than the
    JSON and is kept. The JSON files are only read: keep them until the database has proved
    itself, then remove `<state_dir>/<facility>/secrets` (it holds bearer tokens)."""
    root = Path(state_dir) / facility
    now = now_iso()
    with store._write() as conn:
        taken = conn.execute(store._insert(markers)
                             .values(facility=facility, name=JSON_IMPORT_MARKER, done_at=now)
                             .on_conflict_do_nothing(index_elements=["facility", "name"])
                             .returning(markers.c.name)).first()
        if taken is None:  # (RETURNING: psycopg reports no rowcount for an INSERT)
            return ImportReport(already_done=True)
        records = _import_records(conn, store, root / "ledger")
        secrets = _import_prepared_ids(conn, store, root / "secrets", now)
        _import_first_run(conn, store, root / "first-run")
    store.first_run = store._first_run()
    log.info("imported %d ledger records and %d preparedIds from %s", records, secrets, root)
    return ImportReport(records=records, prepared_ids=secrets)


def _import_records(conn: Connection, store: SqlStateStore, ledger_dir: Path) -> int:
    count = 0
    for path in sorted(ledger_dir.glob("*.json")):
        if not path.stem.isdigit():
            continue
        try:
            rec = LedgerRecord.from_json({**json.loads(path.read_text()),
                                          "download_id": int(path.stem)})
        except (ValueError, TypeError, OSError) as exc:
            log.warning("skipped unreadable ledger file %s: %s", path, exc)
            continue
        doc = rec.to_json()  # from_json dropped any preparedId an old ledger kept
        done = conn.execute(store._insert(ledger)
                            .values(facility=store.facility, download_id=rec.download_id,
                                    verdict=doc["verdict"], updated=rec.updated or now_iso(),
                                    record=doc)
                            .on_conflict_do_nothing(index_elements=["facility", "download_id"])
                            .returning(ledger.c.download_id)).first()
        count += done is not None
    return count


def _import_prepared_ids(conn: Connection, store: SqlStateStore, secret_dir: Path,
                         now: str) -> int:
    count = 0
    for path in sorted(secret_dir.glob("*.prepared")):
        if not path.stem.isdigit():
            continue
        value = path.read_text().strip()
        if value:
            done = conn.execute(store._insert(prepared_ids)
                                .values(facility=store.facility, download_id=int(path.stem),
                                        prepared_id=value, stored_at=now)
                                .on_conflict_do_nothing(
                                    index_elements=["facility", "download_id"])
                                .returning(prepared_ids.c.download_id)).first()
            count += done is not None
    return count


def _import_first_run(conn: Connection, store: SqlStateStore, path: Path) -> None:
    """The earlier first run wins: downloads COMPLETE since the JSON era are still ours."""
    try:
        old = datetime.fromisoformat(path.read_text().strip())
    except (OSError, ValueError):
        return
    current = conn.execute(sa.select(facilities.c.first_run)
                           .where(facilities.c.facility == store.facility)).scalar_one()
    if old < datetime.fromisoformat(current):
        conn.execute(sa.update(facilities).where(facilities.c.facility == store.facility)
                     .values(first_run=old.isoformat(timespec="seconds")))
