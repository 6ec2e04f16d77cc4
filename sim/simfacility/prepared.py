"""Prepared selections: what ``prepareData`` writes and every preparedId call reads back.

Why a snapshot: the real IDS writes a JSON "prepared" file holding the resolved datasets and
datafiles (names, locations, facility/investigation names) at prepare time, so later calls need
no ICAT session and do not see renames; a datafile deleted from ICAT afterwards is detected at
getData time (404). The Tidier keeps only the newest ``preparedCount`` files; older preparedIds
then answer 404 ``The preparedId <id> is not known`` (wire reference §1.3).
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from simfacility.errors import IdsError

if TYPE_CHECKING:
    from simfacility.facility import SimFacility


@dataclass(frozen=True)
class DsInfo:
    """The dataset facts the ZipMapper needs (``DsInfoImpl``)."""

    id: int
    name: str
    location: str | None
    investigation_id: int
    investigation_name: str
    visit_id: str
    facility_id: int
    facility_name: str


@dataclass(frozen=True)
class DfInfo:
    """The datafile facts kept in a prepared record (``DfInfoImpl``)."""

    id: int
    name: str
    location: str
    dataset_id: int
    size: int


@dataclass
class PreparedRecord:
    zip: bool
    compress: bool
    datafiles: list[DfInfo]  # ascending id, as the IDS's TreeSet
    datasets: dict[int, DsInfo]
    empty_datasets: list[int] = field(default_factory=list)

    @property
    def datafile_ids(self) -> list[int]:
        return [df.id for df in self.datafiles]


class PreparedStore:
    """preparedId -> record, newest last, bounded by the scenario's ``prepared_count``."""

    def __init__(self, fac: SimFacility):
        self.fac = fac
        self.limit = max(0, int(fac.config.prepared_count))
        self._records: OrderedDict[str, PreparedRecord] = OrderedDict()
        self._lock = threading.Lock()

    def create(self, record: PreparedRecord) -> str:
        """Store a record under a fresh lower-case UUID and evict the oldest beyond the limit."""
        record.datafiles.sort(key=lambda d: d.id)
        pid = str(uuid.uuid4())
        with self._lock:
            self._records[pid] = record
            while len(self._records) > self.limit:
                self._records.popitem(last=False)
        return pid

    def get(self, prepared_id: str) -> PreparedRecord:
        with self._lock:
            record = self._records.get(prepared_id)
        if record is None:
            raise IdsError("NotFoundException", f"The preparedId {prepared_id} is not known")
        return record

    def forget(self, prepared_id: str | None = None) -> int:
        """Drop one preparedId, or all of them (the ``forget_prepared`` fault); returns count."""
        with self._lock:
            if prepared_id is None:
                n = len(self._records)
                self._records.clear()
                return n
            return 1 if self._records.pop(prepared_id, None) is not None else 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)
