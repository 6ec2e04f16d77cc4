"""pollcat's own memory between sweeps: a per-download ledger and a per-download lock.

TopCAT has no field for "delivered" (wire reference §4.2), and a sweep may crash anywhere, so
what pollcat has done is kept here: prepare attempts, first sighting (for the transient deadline),
the verdict. The lock is an `flock` on a file in the state dir: held while a download is being
delivered, released by the kernel if the process dies, so overlapping sweeps or several workers
sharing the state dir never deliver one download twice at the same time. (Workers on different
hosts are kept apart by the claim on the target itself, `pollcat.claim`.)

The ledger holds no secret: a preparedId is a bearer token for the data, so the one pollcat made
itself is kept apart in `secrets/` (mode 0600), and the ledger only remembers a fingerprint of
TopCAT's preparedId to notice when TopCAT prepares the download again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pollcat.errors import ConfigurationError
from pollcat.states import Verdict

if TYPE_CHECKING:
    from pollcat.ledger_sql import SqlStateStore

_FACILITY = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def fingerprint(secret: str | None) -> str:
    """A stable, non-reversible name for a preparedId (for comparing, never for fetching)."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16] if secret else ""


@dataclass
class LedgerRecord:
    """One download's row in the ledger."""

    download_id: int
    first_seen: str = ""
    updated: str = ""
    verdict: Verdict | None = None
    reason: str = ""
    expired_in_topcat: bool = False  # TopCAT accepted EXPIRED (a later RESTORING is a resume)
    outcome: str = ""  # the last sweep's outcome for it (waiting, retry, held, ...)
    outcome_since: str = ""  # since when that outcome holds
    prepare_attempts: int = 0
    restore_failures: int = 0
    prepared_from: str = ""  # fingerprint of TopCAT's preparedId when pollcat prepared its own
    last_error: str = ""
    mismatch_signature: str = ""  # the last verification failure, to spot one that repeats
    mismatch_count: int = 0
    path: str = ""  # the download's directory, recorded once its claim is taken (before transfer)
    transport: str = ""
    files: int = 0
    bytes: int = 0
    delivered_at: str = ""
    # when pollcat first gave up on it (EXPIRED): retention's age for an expired download whose
    # files (part of them, or all but the grant) are on the target at `path`
    expired_at: str = ""
    grants: list[dict[str, Any]] = field(default_factory=list)  # access actions applied
    removed: list[dict[str, Any]] = field(default_factory=list)  # retention's removals

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> LedgerRecord:
        raw = dict(raw)
        if "outcome" in raw and "verdict" not in raw:  # ledgers written before the rename
            raw["verdict"] = raw.pop("outcome")
        raw.pop("prepared_id", None)  # old ledgers kept it here; it is a secret
        known = {f.name for f in dataclasses.fields(cls)}
        rec = cls(**{k: v for k, v in raw.items() if k in known})
        rec.verdict = Verdict(rec.verdict) if rec.verdict else None
        return rec

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["verdict"] = str(self.verdict) if self.verdict else None
        return out


def _bound_file(name: str) -> str:
    """A file name for a bound's name (transport names are the facility's free text)."""
    return hashlib.sha256(name.encode()).hexdigest()[:32]


class StateStore:
    def __init__(self, state_dir: str | Path, facility: str):
        if not _FACILITY.match(facility):
            raise ConfigurationError(f"facility name {facility!r} is not usable as a file name")
        self.root = Path(state_dir) / facility
        self.ledger_dir = self.root / "ledger"
        self.lock_dir = self.root / "locks"
        self.secret_dir = self.root / "secrets"
        try:
            self.ledger_dir.mkdir(parents=True, exist_ok=True)
            self.lock_dir.mkdir(parents=True, exist_ok=True)
            self.secret_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.secret_dir, 0o700)
        except OSError as exc:
            raise ConfigurationError(f"cannot use state dir {self.root}: {exc}") from exc
        self.first_run = self._first_run()

    def _first_run(self) -> datetime:
        """When pollcat first swept this facility: older COMPLETE downloads are not ours."""
        path = self.root / "first-run"
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "w") as fh:
                fh.write(now_iso())
        except FileExistsError:
            pass
        return datetime.fromisoformat(path.read_text().strip())

    def _path(self, download_id: int) -> Path:
        return self.ledger_dir / f"{int(download_id)}.json"

    def get(self, download_id: int) -> LedgerRecord:
        """The record; an empty one (not stored) for a download never seen."""
        try:
            return LedgerRecord.from_json(json.loads(self._path(download_id).read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return LedgerRecord(download_id=int(download_id))

    def update(self, download_id: int, **fields: Any) -> LedgerRecord:
        rec = self.get(download_id)
        for key, value in fields.items():
            if not hasattr(rec, key):
                raise AttributeError(f"the ledger has no field {key!r}")
            # a function of the current record: an increment or an append that the SQL store
            # evaluates inside its transaction (here the per-download lock serialises writers)
            setattr(rec, key, value(rec) if callable(value) else value)
        rec.first_seen = rec.first_seen or now_iso()
        rec.updated = now_iso()
        _replace_with(self._path(download_id),
                      json.dumps(rec.to_json(), indent=1, sort_keys=True), mode=0o644)
        return rec

    def seen(self, download_id: int) -> LedgerRecord:
        """The record, created on first sight."""
        rec = self.get(download_id)
        return rec if rec.first_seen else self.update(download_id)

    def records(self) -> Iterator[LedgerRecord]:
        for path in sorted(self.ledger_dir.glob("*.json")):
            with contextlib.suppress(ValueError, TypeError, OSError):
                yield LedgerRecord.from_json(json.loads(path.read_text()))

    # ------------------------------------------------------------ discovery bounds
    def scan_bound(self, name: str) -> int | None:
        """The highest download id below which discovery query `name` has nothing left to find
        (None: scan from the start). See `Pipeline.discover`."""
        try:
            return int((self.root / "scan-bounds" / _bound_file(name)).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def raise_scan_bound(self, name: str, after_id: int) -> None:
        """Move the bound up (never down). A bound is valid for ever once computed (what lies
        below it is settled for good), so concurrent writers may land in any order."""
        current = self.scan_bound(name)
        if current is not None and current >= after_id:
            return
        folder = self.root / "scan-bounds"
        folder.mkdir(exist_ok=True)
        _replace_with(folder / _bound_file(name), str(int(after_id)))

    # ------------------------------------------------------------ the preparedId pollcat made
    def own_prepared_id(self, download_id: int) -> str | None:
        try:
            return (self.secret_dir / f"{int(download_id)}.prepared").read_text().strip() or None
        except FileNotFoundError:
            return None

    def keep_prepared_id(self, download_id: int, prepared_id: str) -> None:
        _replace_with(self.secret_dir / f"{int(download_id)}.prepared", prepared_id)

    # ------------------------------------------------------------ the lock
    @contextlib.contextmanager
    def lock(self, download_id: int) -> Iterator[bool]:
        """Yields True while this process holds the download, False if another one does."""
        path = self.lock_dir / f"{int(download_id)}.lock"
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {now_iso()}\n".encode())
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _replace_with(path: Path, text: str, mode: int = 0o600) -> None:
    """Write `text` to a temporary file of its own beside `path`, then rename it over `path`.

    The temporary name is unique (`mkstemp`: exclusive, never through a link), not derived
    from the process id: two threads of one process raising the same scan bound once wrote
    the same temporary file, and the second rename found it gone (FileNotFoundError in a sweep
    overlapping another in the same process)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        if mode != 0o600:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def open_state_store(state_dir: str | os.PathLike[str], facility: str,
                     ledger_url: str | None) -> StateStore | SqlStateStore:
    """The store the pipeline uses: JSON files without a URL, the database with one (importing
    the facility's JSON ledgers on first use, when there are any).

    The SQL ledger (`pollcat.ledger_sql`, SQLAlchemy, psycopg for PostgreSQL) is imported only
    here, for a URL: the JSON ledger never loads it, and a worker installed without the `sql`
    extra runs as long as it is given no ledger URL."""
    if not ledger_url:
        return StateStore(state_dir, facility)
    try:
        from pollcat.ledger_sql import SqlStateStore, import_json_ledgers
    except ImportError as exc:
        if (exc.name or "").partition(".")[0] != "sqlalchemy":
            raise
        raise ConfigurationError("a ledger URL needs the SQL ledger's packages (SQLAlchemy, and "
                                 "psycopg for PostgreSQL): pip install 'pollcat[sql]'") from None
    store = SqlStateStore(ledger_url, facility)
    root = Path(state_dir) / facility
    if (root / "ledger").is_dir() or (root / "first-run").exists():
        import_json_ledgers(state_dir, facility, store)
    return store
