"""What a download contains: datafile metadata from ICAT for the ids the IDS prepared.

The IDS's `getDatafileIds(preparedId)` is the truth about what was prepared (it already leaves
out datafiles with no location); ICAT supplies names, sizes, checksums and parents.
"""

from __future__ import annotations

from dataclasses import dataclass

from pollcat.errors import PermanentError
from pollcat.icat import IcatSession


@dataclass(frozen=True)
class DatafileInfo:
    id: int
    name: str
    size: int
    checksum: str | None
    location: str | None
    dataset_id: int
    dataset: str
    investigation_id: int
    investigation: str
    visit: str
    facility: str


def _info(row: dict) -> DatafileInfo:
    df = row["Datafile"]
    ds = df.get("dataset") or {}
    inv = ds.get("investigation") or {}
    fac = inv.get("facility") or {}
    return DatafileInfo(
        id=int(df["id"]), name=df["name"], size=int(df.get("fileSize") or 0),
        checksum=df.get("checksum"), location=df.get("location"),
        dataset_id=int(ds.get("id", 0)), dataset=ds.get("name", ""),
        investigation_id=int(inv.get("id", 0)), investigation=inv.get("name", ""),
        visit=str(inv.get("visitId", "")), facility=fac.get("name", ""))


def datafiles(icat: IcatSession, ids: list[int], *, chunk: int = 500,
              download_id: int | None = None) -> list[DatafileInfo]:
    """Metadata for every id, in id order; a missing one is a permanent error."""
    found: dict[int, DatafileInfo] = {}
    wanted = sorted(set(ids))
    for start in range(0, len(wanted), chunk):
        part = wanted[start : start + chunk]
        query = (f"SELECT df FROM Datafile df WHERE df.id IN ({', '.join(map(str, part))}) "
                 "INCLUDE df.dataset.investigation.facility")
        for row in icat.search(query):
            info = _info(row)
            found[info.id] = info
    missing = [i for i in wanted if i not in found]
    if missing:
        shown = ", ".join(map(str, missing[:10]))
        raise PermanentError(
            f"{len(missing)} datafile(s) are gone from ICAT or not readable by the functional "
            f"account (ids {shown}{'…' if len(missing) > 10 else ''})", download_id=download_id)
    return [found[i] for i in wanted]
