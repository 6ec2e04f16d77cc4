"""The ledger in a database (`pollcat.ledger_sql`) against SQLite and a real PostgreSQL.

The contract tests run the same assertions against the JSON `StateStore` too: the SQL store is a
drop-in replacement only if both behave alike. The multi-process tests use separate interpreters
(spawned, not forked), each with its own store and connections, as workers on several hosts
would; they meet only in the database.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from pollcat.errors import ConfigurationError
from pollcat.ledger_sql import (
    ImportReport,
    SqlStateStore,
    import_json_ledgers,
    sqlite_url,
)
from pollcat.state import LedgerRecord, StateStore, open_state_store
from pollcat.states import Verdict
from tests.postgres import PostgresServer, running_postgres

SQL_BACKENDS = ["sqlite", "postgresql"]
SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture
def db_url(request, tmp_path) -> str:
    """A fresh, empty database of the backend named by the test's `backend` parameter."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "db" / "ledger.db")
    return request.getfixturevalue("pg_server").create_database()


@pytest.fixture
def open_store(request, tmp_path) -> Iterator[Callable[..., StateStore | SqlStateStore]]:
    """Opens stores of one backend (JSON, SQLite or PostgreSQL) on one shared state."""
    opened: list[SqlStateStore] = []
    url = None
    if request.param == "sqlite":
        url = sqlite_url(tmp_path / "ledger.db")
    elif request.param == "postgresql":
        url = request.getfixturevalue("pg_server").create_database()

    def _open(facility: str = "LILS", **kwargs) -> StateStore | SqlStateStore:
        if url is None:
            return StateStore(tmp_path / "state", facility)
        store = SqlStateStore(url, facility, **kwargs)
        opened.append(store)
        return store

    yield _open
    for store in opened:
        store.close()


contract = pytest.mark.parametrize("open_store", ["json", *SQL_BACKENDS], indirect=True)
sql_only = pytest.mark.parametrize("db_url", SQL_BACKENDS, indirect=True)


# ------------------------------------------------------------------------------------- contract
@contract
def test_an_unseen_download_is_an_empty_record_and_is_not_stored(open_store):
    store = open_store()
    assert store.get(5) == LedgerRecord(download_id=5)
    assert list(store.records()) == []


@contract
def test_seen_creates_once_and_keeps_the_first_sighting(open_store):
    store = open_store()
    first = store.seen(5)
    assert first.first_seen and first.download_id == 5
    store.update(5, first_seen="2001-01-01T00:00:00+00:00")
    assert store.seen(5).first_seen == "2001-01-01T00:00:00+00:00"
    assert [r.download_id for r in store.records()] == [5]


@contract
def test_update_round_trips_every_kind_of_field(open_store):
    store = open_store()
    grants = [{"action": "acl", "user": "alice", "paths": ["a", "b"]}]
    returned = store.update(7, verdict=Verdict.DELIVERED, reason="ok", expired_in_topcat=True,
                            prepare_attempts=3, bytes=2**40, grants=grants, path="/t/7")
    again = open_store().get(7)  # another instance: nothing is cached in the object
    assert again == returned
    assert again.verdict is Verdict.DELIVERED and again.bytes == 2**40 and again.grants == grants
    assert again.first_seen and again.updated
    assert store.update(7, reason="later").prepare_attempts == 3  # other fields are kept


@contract
def test_update_of_an_unknown_field_raises_and_stores_nothing(open_store):
    store = open_store()
    with pytest.raises(AttributeError):
        store.update(8, no_such_field=1)
    assert list(store.records()) == []


@contract
def test_records_lists_each_stored_download_once(open_store):
    store = open_store()
    for download_id in (3, 12, 1):
        store.update(download_id, reason=f"r{download_id}")
    store.update(12, reason="again")
    by_id = {r.download_id: r.reason for r in store.records()}
    assert by_id == {1: "r1", 3: "r3", 12: "again"}


@contract
def test_own_prepared_id_is_kept_and_replaced(open_store):
    store = open_store()
    assert store.own_prepared_id(9) is None
    store.keep_prepared_id(9, "pid-one")
    store.keep_prepared_id(9, "pid-two")
    assert open_store().own_prepared_id(9) == "pid-two"
    assert store.own_prepared_id(10) is None


@contract
def test_first_run_is_fixed_by_the_first_store(open_store):
    first = open_store().first_run
    assert first.tzinfo is not None and abs(datetime.now(UTC) - first).total_seconds() < 60
    time.sleep(1.1)  # now_iso has whole seconds
    assert open_store().first_run == first


@contract
def test_lock_refuses_a_second_holder_and_is_released(open_store):
    store = open_store()
    with store.lock(7) as first:
        assert first is True
        with store.lock(7) as second:
            assert second is False
        with open_store().lock(7) as other_store:
            assert other_store is False
        with store.lock(8) as another_download:
            assert another_download is True
    with open_store().lock(7) as again:
        assert again is True


@contract
def test_facilities_do_not_see_each_other(open_store):
    lils, other = open_store("LILS"), open_store("OTHER")
    lils.update(1, reason="lils")
    lils.keep_prepared_id(1, "lils-pid")
    assert other.get(1) == LedgerRecord(download_id=1)
    assert list(other.records()) == [] and other.own_prepared_id(1) is None
    with lils.lock(1) as a, other.lock(1) as b:
        assert a and b


@contract
def test_scan_bounds_only_move_up_and_are_kept_per_name_and_facility(open_store):
    store = open_store()
    assert store.scan_bound("complete:globus") is None
    store.raise_scan_bound("complete:globus", 40)
    store.raise_scan_bound("complete:globus", 12)  # a slower sweep's older bound: ignored
    store.raise_scan_bound("complete:scarf / ü", 7)
    again = open_store()  # another process, or the next sweep
    assert again.scan_bound("complete:globus") == 40
    assert again.scan_bound("complete:scarf / ü") == 7
    again.raise_scan_bound("complete:globus", 10**12)
    assert store.scan_bound("complete:globus") == 10**12
    assert open_store("OTHER").scan_bound("complete:globus") is None


# ------------------------------------------------------------------------------------- SQL only
@sql_only
def test_a_value_may_be_a_function_of_the_current_record(db_url):
    store = SqlStateStore(db_url, "LILS")
    store.update(1, prepare_attempts=2)
    rec = store.update(1, prepare_attempts=lambda r: r.prepare_attempts + 1,
                       grants=lambda r: [*r.grants, {"n": r.prepare_attempts}])
    assert rec.prepare_attempts == 3 and rec.grants == [{"n": 3}]
    assert store.get(1) == rec
    store.close()


def _increment(url: str, start: float, rounds: int, worker: int) -> None:
    """One worker process: `rounds` atomic increments and one grant per round."""
    while time.time() < start:  # all start together, schema creation included
        time.sleep(0.001)
    store = SqlStateStore(url, "LILS")
    for i in range(rounds):
        store.update(1, prepare_attempts=lambda r: r.prepare_attempts + 1,
                     grants=lambda r, i=i: [*r.grants, {"worker": worker, "i": i}])
    store.close()


@sql_only
def test_concurrent_updates_from_several_processes_lose_nothing(db_url):
    workers, rounds = 4, 50
    start = time.time() + 2.0
    procs = [SPAWN.Process(target=_increment, args=(db_url, start, rounds, w))
             for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    rec = SqlStateStore(db_url, "LILS").get(1)
    assert rec.prepare_attempts == workers * rounds
    assert sorted((g["worker"], g["i"]) for g in rec.grants) == \
        [(w, i) for w in range(workers) for i in range(rounds)]


def _contend(url: str, sentinel: str, start: float, seconds: float, out) -> None:
    """Take the lease on download 1 as often as possible; inside, prove no one else is inside."""
    store = SqlStateStore(url, "LILS", lease_seconds=5)
    wins = refusals = overlaps = 0
    while time.time() < start:
        time.sleep(0.001)
    end = time.time() + seconds  # a late starter (slow import under load) still gets its turn
    while time.time() < end:
        with store.lock(1) as mine:
            if not mine:
                refusals += 1
                time.sleep(0.001)
                continue
            wins += 1
            try:
                os.close(os.open(sentinel, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                overlaps += 1
                continue
            time.sleep(0.01)
            os.unlink(sentinel)
        time.sleep(0.002)  # let the others in
    store.close()
    out.put((wins, refusals, overlaps))


@sql_only
def test_the_lease_is_exclusive_across_processes(db_url, tmp_path):
    SqlStateStore(db_url, "LILS").close()  # schema in place: the test is about the lease
    out = SPAWN.Queue()
    start = time.time() + 2.0
    procs = [SPAWN.Process(target=_contend, args=(db_url, str(tmp_path / "inside"), start, 3, out))
             for _ in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert sum(r[2] for r in results) == 0, results  # never two inside at once
    assert all(r[0] > 0 for r in results), results  # everyone got in at some point ...
    assert sum(r[1] for r in results) > 0, results  # ... and was refused while another was


#: long enough that a renewal made just before the kill is still seen on a loaded host
OWNER_LEASE_S = 5


def _hold_forever(url: str, ready) -> None:
    store = SqlStateStore(url, "LILS", lease_seconds=OWNER_LEASE_S)
    with store.lock(1) as mine:
        ready.put(mine)
        time.sleep(3600)


@sql_only
def test_a_killed_owners_lease_is_taken_over_after_expiry_and_not_before(db_url):
    ready = SPAWN.Queue()
    owner = SPAWN.Process(target=_hold_forever, args=(db_url, ready))
    owner.start()
    try:
        assert ready.get(timeout=60) is True
        me = SqlStateStore(db_url, "LILS", lease_seconds=3)
        # longer than the lease: only renewals keep it
        deadline = time.monotonic() + OWNER_LEASE_S + 1.0
        while time.monotonic() < deadline:
            with me.lock(1) as mine:
                assert mine is False
            time.sleep(0.2)
        os.kill(owner.pid, signal.SIGKILL)  # from here on it renews nothing
        killed_at = time.monotonic()
        left = me.lease(1)
        # (no join before the takeover: reaping the killed process took over 10 s once on a
        # loaded CI host, and the lease had run out before it was read)
        assert left is not None and 0 < left.expires_in <= OWNER_LEASE_S
        assert not left.owner.startswith(me.owner)
        while True:
            with me.lock(1) as mine:
                if mine:
                    waited = time.monotonic() - killed_at
                    assert me.holds(1)
                    break
            assert time.monotonic() - killed_at < left.expires_in + 5, "never taken over"
            time.sleep(0.05)
        assert waited >= left.expires_in - 0.05, (waited, left)  # not before expiry ...
        assert waited < left.expires_in + 2.0, (waited, left)  # ... but soon after
        assert me.lease(1) is None  # released at exit
        me.close()
    finally:
        if owner.is_alive():
            owner.kill()
        owner.join(timeout=30)


@sql_only
def test_a_lease_taken_over_from_a_stalled_owner_is_not_released_by_it(db_url):
    slow = SqlStateStore(db_url, "LILS", lease_seconds=0.6)
    fast = SqlStateStore(db_url, "LILS", lease_seconds=5)
    with slow.lock(1) as mine:
        assert mine
        with slow.engine.begin() as conn:  # as if the renewals had stalled and it expired
            conn.execute(sa.text("UPDATE pollcat_lease SET expires_at = expires_at - 100"))
        with fast.lock(1) as taken:
            assert taken and fast.holds(1) and not slow.holds(1)
            time.sleep(0.5)  # the slow one's renewer notices, and must not take it back
            assert fast.holds(1)
            lease = fast.lease(1)
        assert lease is not None and lease.owner.startswith(fast.owner)
    slow.close()
    fast.close()


# ------------------------------------------------------------------------------------- import
SECRET_OWN = "own-prepared-id-3f9a"
SECRET_OLD = "legacy-prepared-id-77c1"


def _json_state(state_dir: Path) -> StateStore:
    """A JSON state dir as pollcat left it: records, an own preparedId, an old-format record."""
    old = StateStore(state_dir, "LILS")
    old.update(1, verdict=Verdict.COMPLETED, path="/t/1", grants=[{"user": "alice"}])
    old.update(2, prepare_attempts=2, prepared_from="abcd")
    old.keep_prepared_id(2, SECRET_OWN)
    (old.ledger_dir / "3.json").write_text(  # written before "outcome" was renamed
        '{"download_id": 3, "outcome": "expired", "prepared_id": "' + SECRET_OLD + '",'
        ' "first_seen": "2020-02-02T00:00:00+00:00"}')
    (old.root / "first-run").write_text("2020-01-01T00:00:00+00:00")
    return old


def _all_text(url: str, table: str) -> str:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT * FROM {table}")).all()
    engine.dispose()
    return repr(rows)


@sql_only
def test_json_ledgers_are_imported_once(db_url, tmp_path):
    old = _json_state(tmp_path / "state")
    store = SqlStateStore(db_url, "LILS")
    store.update(2, reason="newer in the database")  # a row the database already has wins

    report = import_json_ledgers(tmp_path / "state", "LILS", store)
    assert report == ImportReport(records=2, prepared_ids=1)
    assert store.get(1) == old.get(1) and store.get(1).verdict is Verdict.COMPLETED
    assert store.get(2).reason == "newer in the database"
    assert store.get(3).verdict is Verdict.EXPIRED
    assert store.own_prepared_id(2) == SECRET_OWN
    assert store.first_run == datetime(2020, 1, 1, tzinfo=UTC)
    assert SqlStateStore(db_url, "LILS").first_run == datetime(2020, 1, 1, tzinfo=UTC)

    store.update(1, reason="changed after the import")
    (old.ledger_dir / "4.json").write_text('{"download_id": 4}')
    again = open_state_store(tmp_path / "state", "LILS", db_url)
    assert isinstance(again, SqlStateStore)
    assert import_json_ledgers(tmp_path / "state", "LILS", again) == \
        ImportReport(already_done=True)
    assert again.get(1).reason == "changed after the import"
    assert sorted(r.download_id for r in again.records()) == [1, 2, 3]


@sql_only
def test_no_prepared_id_is_stored_outside_its_own_table(db_url, tmp_path):
    _json_state(tmp_path / "state")
    store = open_state_store(tmp_path / "state", "LILS", db_url)
    store.keep_prepared_id(5, "fresh-prepared-id-0b2e")
    store.update(5, prepared_from="fingerprint-only")
    with store.lock(5):
        for table in ("pollcat_ledger", "pollcat_facility", "pollcat_lease", "pollcat_marker"):
            text = _all_text(db_url, table)
            for secret in (SECRET_OWN, SECRET_OLD, "fresh-prepared-id-0b2e"):
                assert secret not in text, (table, secret)
    kept = _all_text(db_url, "pollcat_prepared_id")
    assert SECRET_OWN in kept and "fresh-prepared-id-0b2e" in kept  # the check can see them
    assert SECRET_OLD not in kept  # an old ledger's copy was TopCAT's, not ours: dropped


def test_open_state_store_without_a_url_is_the_json_store(tmp_path):
    assert isinstance(open_state_store(tmp_path, "LILS", None), StateStore)
    assert isinstance(open_state_store(tmp_path, "LILS", ""), StateStore)


def test_the_json_ledger_never_imports_sqlalchemy(tmp_path):
    """SQLAlchemy and psycopg are the `sql` extra: the pipeline on the JSON ledger runs without
    them (prefect depends on SQLAlchemy, but pollcat loads it only for a ledger URL)."""
    code = ("import sys, pollcat.pipeline, pollcat.cli\n"
            "from pollcat.state import open_state_store\n"
            f"open_state_store({str(tmp_path)!r}, 'LILS', None)\n"
            "print(sorted(m for m in ('sqlalchemy', 'psycopg', 'pollcat.ledger_sql')"
            " if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_ledger_url_without_the_sql_extra_is_a_configuration_error(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "sqlalchemy" or m.startswith("sqlalchemy.")
                 or m == "pollcat.ledger_sql"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)  # `import sqlalchemy` fails
    with pytest.raises(ConfigurationError, match=r"pollcat\[sql\]") as err:
        open_state_store(tmp_path, "LILS", "postgresql://pollcat:s3cret@db/pollcat")
    assert "s3cret" not in str(err.value)


def test_a_postgresql_url_without_psycopg_names_the_sql_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` fails
    with pytest.raises(ConfigurationError, match=r"pollcat\[sql\]") as err:
        # (a URL of its own: engines are shared per URL, and this one must be a new engine)
        SqlStateStore("postgresql://pollcat:s3cret@127.0.0.1:2/no-driver", "LILS")
    assert "s3cret" not in str(err.value)


def test_the_sqlite_file_is_private(tmp_path):
    SqlStateStore(sqlite_url(tmp_path / "ledger.db"), "LILS").close()
    assert (tmp_path / "ledger.db").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("url", ["mysql://u:s3cret@h/db", "sqlite://", "sqlite:///:memory:",
                                 "nonsense-s3cret", "postgresql+nosuchdriver://u:s3cret@h/db"])
def test_unusable_urls_are_configuration_errors_without_the_password(url):
    with pytest.raises(ConfigurationError) as err:
        SqlStateStore(url, "LILS")
    assert "s3cret" not in str(err.value)


def test_an_unreachable_database_is_a_configuration_error_without_the_password():
    with pytest.raises(ConfigurationError) as err:
        SqlStateStore("postgresql://pollcat:s3cret@127.0.0.1:1/pollcat", "LILS")
    assert "s3cret" not in str(err.value)


def _open_at(url: str, start: float) -> None:
    while time.time() < start:
        time.sleep(0.0005)
    SqlStateStore(url, "LILS").close()


def test_many_processes_opening_a_fresh_sqlite_ledger_at_once(tmp_path):
    """A new SQLite file starts in rollback-journal mode; processes switching it to WAL while
    another creates the tables used to deadlock, and SQLite answered "database is locked" at
    once (seen in CI). Several fresh files, eight processes each, all must open it."""
    for n in range(4):
        url = sqlite_url(tmp_path / f"fresh-{n}" / "ledger.db")
        start = time.time() + 1.5
        procs = [SPAWN.Process(target=_open_at, args=(url, start)) for _ in range(8)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
        assert [p.exitcode for p in procs] == [0] * 8, n
