"""ICAT datafile lookups within maxEntities and the front end's request-line limit.

Checked against the simulated ICAT, which refuses (412 VALIDATION, 414) exactly what a real
deployment would: every datafile comes back with its ICAT size and checksum, and every query
pollcat sent fitted both limits.
"""

from __future__ import annotations

import pytest

from pollcat import catalog
from pollcat.errors import ConfigurationError
from pollcat.icat import IcatSession
from tests.conftest import scenario

N_FILES = 95


def big_sim(make_sim, **extra):
    return make_sim(scenario(
        investigations=[{"name": "INV-B", "users": ["simple/alice"], "datasets": [
            {"name": "many", "datafiles": [{"generate": N_FILES, "size": 10}]}]}], **extra))


def session(sim, **kw) -> IcatSession:
    return IcatSession(sim.url, auth="simple", username="pollcat", password="pollpass",
                       timeout=10, **kw)


class Recording(IcatSession):
    """Records the queries actually sent."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.sent: list[str] = []

    def search(self, query: str):
        self.sent.append(query)
        return super().search(query)


def file_ids(sim) -> list[int]:
    return sorted(df.id for df in sim.store.datafiles.values() if df.name.startswith("file_"))


def check_all_found(sim, infos) -> None:
    by_id = sim.store.datafiles
    assert [i.id for i in infos] == file_ids(sim)
    for info in infos:
        assert info.size == by_id[info.id].size and info.checksum == by_id[info.id].checksum
        assert info.dataset == "many" and info.facility == "LILS"


def test_chunks_follow_max_entities_from_icat_properties(make_sim):
    sim = big_sim(make_sim, icat={"max_entities": 40})  # 10 datafiles per query
    icat = Recording(sim.url, auth="simple", username="pollcat", password="pollpass",
                     timeout=10)
    infos = catalog.datafiles(icat, file_ids(sim))
    check_all_found(sim, infos)
    assert icat.max_entities() == 40
    assert len(icat.sent) == 10  # ceil(95 / 10), none refused


def test_chunks_follow_the_request_line_limit(make_sim):
    limit = 600
    sim = big_sim(make_sim, http={"max_request_line": limit})
    icat = Recording(sim.url, auth="simple", username="pollcat", password="pollpass",
                     timeout=10, max_request_line=limit)
    infos = catalog.datafiles(icat, file_ids(sim))
    check_all_found(sim, infos)
    assert len(icat.sent) > 1
    assert all(icat.search_request_line(q) <= limit for q in icat.sent)
    # and the chunks are full: adding the next id would have crossed the limit
    first_run = next(catalog.id_chunks(icat, file_ids(sim)))
    longer = catalog.datafile_query(file_ids(sim)[:len(first_run) + 1])
    assert icat.search_request_line(longer) > limit


def test_long_ids_stay_under_8_kib(make_sim):
    sim = big_sim(make_sim)
    icat = session(sim)
    ids = list(range(10**12, 10**12 + 5000))  # 13 digits
    assert icat.search_request_line(catalog.datafile_query(ids[:500])) > 8190  # the old chunk
    runs = list(catalog.id_chunks(icat, ids))
    assert [i for run in runs for i in run] == ids
    assert max(len(r) for r in runs) < 500
    assert all(icat.search_request_line(catalog.datafile_query(r)) <= 8190 for r in runs)


def test_a_stale_max_entities_halves_the_chunk_instead_of_failing(make_sim):
    sim = big_sim(make_sim, icat={"max_entities": 40})
    icat = Recording(sim.url, auth="simple", username="pollcat", password="pollpass",
                     timeout=10)
    icat._max_entities = 10_000  # what it read before ICAT was reconfigured
    check_all_found(sim, catalog.datafiles(icat, file_ids(sim)))
    assert len(icat.sent) > 1


def test_limits_too_small_for_one_datafile_are_configuration_errors(make_sim):
    sim = big_sim(make_sim, icat={"max_entities": 3})
    with pytest.raises(ConfigurationError, match="maxEntities 3"):
        catalog.datafiles(session(sim), file_ids(sim), download_id=7)
    tiny = session(big_sim(make_sim), max_request_line=100)
    with pytest.raises(ConfigurationError, match="request-line limit of 100") as info:
        catalog.datafiles(tiny, file_ids(sim), download_id=7)
    assert info.value.download_id == 7
