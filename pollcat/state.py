"""pollcat's own memory between sweeps: a per-download ledger and a per-download lock.

TopCAT has no field for "delivered" (wire reference §4.2), and a sweep may crash anywhere, so
what pollcat has done is kept here: prepare attempts, first sighting (for the transient deadline),
the outcome. The lock is an `flock` on a file in the state dir: held while a download is being
delivered, released by the kernel if the process dies, so overlapping sweeps or several workers
sharing the state dir never deliver one download twice at the same time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pollcat.errors import ConfigurationError, DeliveryLocked

_FACILITY = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class StateStore:
    def __init__(self, state_dir: str | Path, facility: str):
        if not _FACILITY.match(facility):
            raise ConfigurationError(f"facility name {facility!r} is not usable as a file name")
        self.root = Path(state_dir) / facility
        self.ledger_dir = self.root / "ledger"
        self.lock_dir = self.root / "locks"
        try:
            self.ledger_dir.mkdir(parents=True, exist_ok=True)
            self.lock_dir.mkdir(parents=True, exist_ok=True)
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

    def get(self, download_id: int) -> dict[str, Any]:
        try:
            return json.loads(self._path(download_id).read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            return {}

    def update(self, download_id: int, **fields: Any) -> dict[str, Any]:
        rec = self.get(download_id)
        rec.setdefault("download_id", int(download_id))
        rec.setdefault("first_seen", now_iso())
        rec.update(fields)
        rec["updated"] = now_iso()
        path = self._path(download_id)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(rec, indent=1, sort_keys=True))
        os.replace(tmp, path)
        return rec

    def seen(self, download_id: int) -> dict[str, Any]:
        """The record, created on first sight."""
        rec = self.get(download_id)
        return rec if rec else self.update(download_id)

    @contextlib.contextmanager
    def lock(self, download_id: int) -> Iterator[None]:
        path = self.lock_dir / f"{int(download_id)}.lock"
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DeliveryLocked("another worker is delivering this download",
                                     download_id=download_id) from None
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {now_iso()}\n".encode())
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
