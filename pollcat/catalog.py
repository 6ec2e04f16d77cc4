"""What a download contains: datafile metadata from ICAT for the ids the IDS prepared.

The IDS's `getDatafileIds(preparedId)` is the truth about what was prepared (it already leaves
out datafiles with no location); ICAT supplies names, sizes, checksums and parents.

The lookup is a GET whose query is in the URL, so it is chunked by two limits that real
deployments impose (sim-fidelity audit rows 7 and §5.4): ICAT's `maxEntities` (each datafile
row costs four entities: itself and the INCLUDEd dataset, investigation and facility) and the
front end's request-line limit (about 8 KiB: 500 ids of 12 digits already exceed it).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pollcat.errors import ConfigurationError, PermanentError, PermanentServiceError
from pollcat.icat import IcatSession

ENTITIES_PER_DATAFILE = 4  # Datafile + dataset + investigation + facility (INCLUDE counts)
MAX_IN_LIST = 1000  # Oracle's limit on an IN list, which ICAT passes through to the database


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


def datafile_query(ids: list[int]) -> str:
    return (f"SELECT df FROM Datafile df WHERE df.id IN ({', '.join(map(str, ids))}) "
            "INCLUDE df.dataset.investigation.facility")


def id_chunks(icat: IcatSession, ids: list[int], *,
              download_id: int | None = None) -> Iterator[list[int]]:
    """Consecutive runs of `ids` whose lookup fits both maxEntities and the request line.

    Greedy: a run grows while it stays under the entity budget and its request line stays under
    the limit. The length is computed incrementally from what `requests` makes of an empty and
    a two-id query (digits encode as themselves, the separator as measured), so 100,000 ids
    cost no more than one encoding each; one id that cannot fit alone is a configuration
    problem, not something to retry.
    """
    per_query = min(icat.max_entities() // ENTITIES_PER_DATAFILE, MAX_IN_LIST)
    if per_query < 1:
        raise ConfigurationError(
            f"ICAT maxEntities {icat.max_entities()} is below {ENTITIES_PER_DATAFILE}: not even "
            "one datafile with its dataset, investigation and facility can be read",
            download_id=download_id, service="ICAT")
    limit = icat.max_request_line
    empty = icat.search_request_line(datafile_query([]))
    one = icat.search_request_line(datafile_query([1]))
    separator = icat.search_request_line(datafile_query([1, 1])) - one - 1
    run: list[int] = []
    length = empty
    for i in ids:
        digits = len(str(i))
        grown = length + digits + (separator if run else 0)
        if run and (len(run) >= per_query or grown > limit):
            yield run
            run, grown = [], empty + digits
        if grown > limit:
            raise ConfigurationError(
                f"an ICAT lookup of one datafile (id {i}) is longer than the request-line "
                f"limit of {limit} bytes", download_id=download_id, service="ICAT")
        run.append(i)
        length = grown
    if run:
        yield run


def _lookup(icat: IcatSession, part: list[int]) -> list[dict]:
    """One search; if ICAT still says "more than N entities" (its limit changed, or counts
    differently), halve the chunk rather than fail the download."""
    try:
        return icat.search(datafile_query(part))
    except PermanentServiceError as exc:
        if exc.code != "VALIDATION" or len(part) == 1:
            raise
        half = len(part) // 2
        return _lookup(icat, part[:half]) + _lookup(icat, part[half:])


def datafiles(icat: IcatSession, ids: list[int], *,
              download_id: int | None = None) -> list[DatafileInfo]:
    """Metadata for every id, in id order; a missing one is a permanent error."""
    found: dict[int, DatafileInfo] = {}
    wanted = sorted(set(ids))
    for part in id_chunks(icat, wanted, download_id=download_id):
        for row in _lookup(icat, part):
            info = _info(row)
            found[info.id] = info
    missing = [i for i in wanted if i not in found]
    if missing:
        shown = ", ".join(map(str, missing[:10]))
        raise PermanentError(
            f"{len(missing)} datafile(s) are gone from ICAT or not readable by the functional "
            f"account (ids {shown}{'…' if len(missing) > 10 else ''})", download_id=download_id)
    return [found[i] for i in wanted]
