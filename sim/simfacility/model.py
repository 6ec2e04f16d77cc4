"""The catalogue: ICAT entities held in memory, and the bytes behind each datafile.

Content is deterministic (a seeded 1 MiB block repeated and cut to `size`, or the scenario's
explicit `content`) so a 100,000-file or 1 GiB scenario loads in seconds and every checksum can be
recomputed by anyone from the scenario alone.
"""

from __future__ import annotations

import functools
import random
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

BLOCK_SIZE = 1 << 20
BLOCK_POOL = 16


def icat_time(dt: datetime) -> str:
    """ICAT's date format, `yyyy-MM-dd'T'HH:mm:ss.SSSXXX` (wire reference §3.2)."""
    text = dt.isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


@functools.lru_cache(maxsize=64)
def content_block(seed: int) -> bytes:
    return random.Random(seed).randbytes(BLOCK_SIZE)


def java_hex(crc: int) -> str:
    """`Long.toHexString(crc)`: lower-case hex with no zero padding, as the IDS stores it."""
    return format(crc, "x")


@dataclass
class User:
    id: int
    name: str
    password: str
    full_name: str | None = None
    email: str | None = None


@dataclass
class Facility:
    id: int
    name: str
    full_name: str | None = None


@dataclass
class InvestigationUser:
    id: int
    user_name: str
    investigation_id: int
    role: str = "INVESTIGATOR"


@dataclass
class Investigation:
    id: int
    name: str
    visit_id: str
    title: str
    facility_id: int
    dataset_ids: list[int] = field(default_factory=list)


@dataclass
class Dataset:
    id: int
    name: str
    investigation_id: int
    location: str | None = None
    complete: bool = False
    datafile_ids: list[int] = field(default_factory=list)


@dataclass
class Datafile:
    """A datafile and how to produce its bytes.

    `location` is relative to the data dir (`<invId>/<dsId>/<uuid>`, as ids.storage_file does);
    `None` means the IDS leaves the file out of every selection.
    """

    id: int
    name: str
    dataset_id: int
    size: int
    location: str | None
    checksum: str | None
    seed: int = 0
    content: bytes | None = None
    deleted: bool = False
    # ICAT's fileSize when it differs from the bytes on disk (registered as 0, or stale)
    icat_size: int | None = None

    @property
    def file_size(self) -> int:
        """What ICAT says (`Datafile.fileSize`), which the IDS trusts for sizes and
        Content-Length; `size` stays the true number of bytes."""
        return self.size if self.icat_size is None else self.icat_size

    def iter_bytes(self, offset: int = 0, chunk: int = BLOCK_SIZE) -> Iterator[bytes]:
        """Yield the content from `offset`, in chunks of at most `chunk` bytes.

        Generated content is a window onto one of a few seeded 1 MiB blocks, starting at a
        seed-dependent offset and wrapping around: distinct per file, yet cheap for 100,000 files.
        """
        if self.content is not None:
            data = self.content
            for start in range(offset, len(data), chunk):
                yield data[start : start + chunk]
            return
        view = memoryview(content_block(self.seed % BLOCK_POOL))
        start = (self.seed * 7919) % BLOCK_SIZE
        pos = offset
        while pos < self.size:
            in_block = (start + pos) % BLOCK_SIZE
            n = min(chunk, BLOCK_SIZE - in_block, self.size - pos)
            yield bytes(view[in_block : in_block + n])
            pos += n

    def compute_crc(self) -> int:
        crc = 0
        for piece in self.iter_bytes():
            crc = zlib.crc32(piece, crc)
        return crc


class Store:
    """All entities of the simulated ICAT, with one id sequence shared by every entity type."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.lock = threading.RLock()
        self._next_id = 0
        self.created = datetime.now(UTC)
        self.facility: Facility | None = None
        self.users: dict[str, User] = {}
        self.investigations: dict[int, Investigation] = {}
        self.investigation_users: dict[int, InvestigationUser] = {}
        self.datasets: dict[int, Dataset] = {}
        self.datafiles: dict[int, Datafile] = {}
        self.admins: set[str] = set()  # ICAT: read every investigation
        self.ids_root_user_names: set[str] = set()
        self._investigations_by_user: dict[str, set[int]] = {}

    def next_id(self) -> int:
        with self.lock:
            self._next_id += 1
            return self._next_id

    # -- ICAT authorization (wire reference §3.5): `admins` (icat.read_all) read all, others
    #    their investigations --
    def is_admin(self, user_name: str) -> bool:
        return user_name in self.admins

    def add_investigation_user(self, iu: InvestigationUser) -> None:
        self.investigation_users[iu.id] = iu
        self._investigations_by_user.setdefault(iu.user_name, set()).add(iu.investigation_id)

    def user_investigation_ids(self, user_name: str) -> set[int]:
        return set(self._investigations_by_user.get(user_name, ()))

    def can_read_investigation(self, user_name: str, investigation_id: int) -> bool:
        if self.is_admin(user_name):
            return investigation_id in self.investigations
        return investigation_id in self._investigations_by_user.get(user_name, ())

    def can_read_dataset(self, user_name: str, dataset_id: int) -> bool:
        ds = self.datasets.get(dataset_id)
        return ds is not None and self.can_read_investigation(user_name, ds.investigation_id)

    def can_read_datafile(self, user_name: str, datafile_id: int) -> bool:
        df = self.datafiles.get(datafile_id)
        return (df is not None and not df.deleted
                and self.can_read_dataset(user_name, df.dataset_id))

    # -- navigation --
    def dataset_of(self, df: Datafile) -> Dataset:
        return self.datasets[df.dataset_id]

    def investigation_of(self, ds: Dataset) -> Investigation:
        return self.investigations[ds.investigation_id]

    def path_of(self, df: Datafile) -> Path:
        """Where the datafile lives on main storage (the data dir) when it is online."""
        if df.location is None:
            raise ValueError(f"datafile {df.id} has no location")
        return self.data_dir / df.location

    def live_datafiles(self, dataset_id: int) -> list[Datafile]:
        ds = self.datasets[dataset_id]
        out = []
        for dfid in ds.datafile_ids:
            df = self.datafiles.get(dfid)
            if df is not None and not df.deleted:
                out.append(df)
        return out


def materialize(store: Store, df: Datafile) -> Path:
    """Write a datafile's bytes to main storage (atomically) and return the path."""
    path = store.path_of(df)
    if path.exists() and path.stat().st_size == df.size:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        for chunk in df.iter_bytes():
            fh.write(chunk)
    tmp.replace(path)
    return path


def dematerialize(store: Store, df: Datafile) -> None:
    """Drop a datafile from main storage (it stays in the archive)."""
    if df.location is None:
        return
    try:
        store.path_of(df).unlink()
    except FileNotFoundError:
        pass
