"""The store, on SQLite and on PostgreSQL: registry, telemetry batches, and
refusing what is not ours."""

from __future__ import annotations

import concurrent.futures
import sqlite3
import threading
from pathlib import Path

import pytest

from gateway import db as dbapi
from gateway.errors import StoreError
from gateway.store import SCHEMA_VERSION, Store, TelemetryRow

from ..conftest import DbAt
from ..support.postgres import Postgres

HELLO = {
    "model": "shirt",
    "board": "shirt-v1",
    "runtime": "0.1.0",
    "platform": "micropython",
    "features": {"vent": {"version": "1.0.0", "enabled": True, "running": True}},
    "boot_count": 3,
    "reset_cause": "soft",
    "heap_free": 50000,
    "keepalive": 30,
    "telemetry_s": 10,
}


def test_processes_opening_a_new_database_at_once_each_find_it_made_once(db_at: DbAt) -> None:
    """A pool's workers (and a command beside them) may open a database no
    one has made yet at the same instant: each opens it at the newest schema,
    made once. (Threads, each on its own connection, started together.)"""
    for k in range(3):
        where = db_at(f"new-{k}.db")
        barrier = threading.Barrier(8, timeout=60)

        def open_it(where: Path | str = where, barrier: threading.Barrier = barrier) -> int:
            barrier.wait()
            with Store(where) as s:
                return s.schema

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            schemas = [pool.submit(open_it) for _ in range(8)]
            assert [f.result() for f in schemas] == [SCHEMA_VERSION] * 8
        with Store(where) as s:
            assert s.get_meta("schema") == str(SCHEMA_VERSION)


def test_registry_survives_reopening(db_at: DbAt) -> None:
    db = db_at()
    with Store(db) as s:
        s.upsert_hello("sh-1", HELLO, 100.0)
        assert s.set_state("sh-1", True, None, 101.0) is True
        assert s.set_state("sh-1", True, None, 102.0) is False  # no change
        s.add_telemetry(
            [TelemetryRow("sh-1", 103.0 + i, 1.0, i, {"sensors": {"humidity": i}}) for i in range(5)]
        )
    with Store(db, readonly=True) as s:
        d = s.device("sh-1")
        assert d is not None and d.online and d.model == "shirt" and d.first_seen == 100.0
        assert d.last_telemetry == {"sensors": {"humidity": 4}}
        assert [r.seq for r in s.telemetry("sh-1", 3)] == [2, 3, 4]
        assert s.telemetry_count() == 5
        assert s.schema == SCHEMA_VERSION
        with pytest.raises(dbapi.Error):
            s.upsert_hello("sh-2", HELLO, 104.0)  # (read only)
    if isinstance(db, Path):
        assert (db.stat().st_mode & 0o777) == 0o600


def test_hello_again_keeps_first_seen(db_at: DbAt) -> None:
    with Store(db_at()) as s:
        s.upsert_hello("sh-1", HELLO, 100.0)
        s.upsert_hello("sh-1", HELLO | {"boot_count": 4}, 200.0)
        d = s.device("sh-1")
        assert d is not None and d.first_seen == 100.0 and d.boot_count == 4 and d.last_seen == 200.0


def test_a_foreign_database_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE accounts (id INTEGER)").connection.commit()
    with pytest.raises(StoreError, match="not a permabeta"):
        Store(other)
    with pytest.raises(StoreError, match="not a permabeta"):
        Store(other, readonly=True)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError):
        Store(garbage)


def test_missing_database_read_only_says_so(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no gateway database"):
        Store(tmp_path / "nope.db", readonly=True)


def test_a_postgresql_database_not_ours_or_not_there_is_refused_and_its_password_not_said(
    postgres: Postgres,
) -> None:
    other = postgres.database()
    import psycopg

    with psycopg.connect(other, autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id INTEGER)")
    with pytest.raises(StoreError, match="not a permabeta"):
        Store(other)
    with pytest.raises(StoreError, match="not a permabeta"):
        Store(other, readonly=True)
    gone = postgres.url("nowhere").replace("pb@", "pb:secret-pw@")
    with pytest.raises(StoreError, match="cannot open gateway database") as refused:
        Store(gone)
    assert "secret-pw" not in str(refused.value) and "pb:***@" in str(refused.value)


def test_words_with_a_nul_are_kept_on_either_engine(db_at: DbAt) -> None:
    """PostgreSQL's text cannot hold U+0000: what a device says with one is
    kept with U+FFFD there (SQLite keeps it as it came), never refused."""
    with Store(db_at()) as s:
        s.upsert_hello("sh-1", HELLO | {"runtime": "0.1\x00evil"}, 100.0)
        s.add_event("sh-1", "error", "vent\x00", "a\x00b", 101.0)
        s.count_reject("bad_json", "pb/sh-1/telemetry", "not JSON: \x00", 102.0)
        nul = "\x00" if s.db.kind == "sqlite" else "\ufffd"
        d = s.device("sh-1")
        assert d is not None and d.runtime == f"0.1{nul}evil" and d.hello["runtime"] == "0.1\x00evil"
        assert s.events("sh-1")[-1] | {"received": 0} == {
            "received": 0,
            "kind": "error",
            "feature": f"vent{nul}",
            "message": f"a{nul}b",
        }
        assert s.rejects()["bad_json"]["last_detail"] == f"not JSON: {nul}"


def test_reject_counters_accumulate(db_at: DbAt) -> None:
    with Store(db_at()) as s:
        s.count_reject("bad_json", "pb/x/telemetry", "not JSON", 1.0)
        s.count_reject("bad_json", "pb/y/telemetry", "not JSON either", 2.0)
        assert s.rejects()["bad_json"]["count"] == 2
        assert s.rejects()["bad_json"]["last_topic"] == "pb/y/telemetry"


def test_a_batch_with_a_row_that_cannot_be_stored_keeps_the_others(db_at: DbAt) -> None:
    with Store(db_at()) as s:
        for dev in ("sh-1", "sh-2"):
            s.upsert_hello(dev, HELLO, 100.0)
        # the real database refuses one device's rows, as a full disk or a bug would
        if s.db.kind == "postgresql":
            s.db.script(
                "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN IF NEW.device = 'sh-2' THEN"
                " RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql;"
                " CREATE TRIGGER refuse BEFORE INSERT ON telemetry FOR EACH ROW EXECUTE FUNCTION refuse();"
            )
        else:
            s.db.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON telemetry WHEN NEW.device = 'sh-2' "
                "BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        rows = [TelemetryRow(dev, 101.0 + i, 1.0, i, {"i": i}) for i in range(3) for dev in ("sh-1", "sh-2")]
        stored, failed = s.add_telemetry(rows)
        assert stored == 3
        assert [(r.device, r.seq) for r, _ in failed] == [("sh-2", 0), ("sh-2", 1), ("sh-2", 2)]
        assert all(isinstance(exc, dbapi.Error) and "refused" in str(exc) for _, exc in failed)
        assert [r.seq for r in s.telemetry("sh-1")] == [0, 1, 2]
        d = s.device("sh-1")
        assert d is not None and d.last_telemetry == {"i": 2}
        assert s.telemetry_count("sh-2") == 0
        assert s.add_telemetry([]) == (0, [])


def test_a_stored_device_row_of_an_odd_shape_is_listed_as_well_as_can_be(db_at: DbAt) -> None:
    with Store(db_at()) as s:
        s.upsert_hello("sh-1", HELLO, 100.0)
        s.upsert_hello("sh-2", HELLO, 100.0)
        # as a gateway that checked hellos less stored them, or a bug
        s.db.execute("UPDATE devices SET features = ?, hello = ? WHERE id = 'sh-1'", ('{"vent": 5}', "[1]"))
        s.db.execute(
            "UPDATE devices SET features = ?, last_telemetry = ? WHERE id = 'sh-2'", ("not json", "7")
        )
        listed = {d.id: d.summary() for d in s.devices()}
        assert listed["sh-1"]["features"] == {"vent": None}
        assert listed["sh-2"]["features"] == {}
        d = s.device("sh-2")
        assert d is not None and d.last_telemetry == {} and d.ota is None


def test_a_connection_lost_to_postgresql_is_made_again_and_nothing_after_it_is_lost(
    postgres: Postgres,
) -> None:
    """A server that ends the session (restarted, failed over): the statement
    that found it lost fails, the next one runs on a new connection; lost
    within a transaction, the transaction fails to its end, and none of it
    is half kept."""
    import psycopg

    url = postgres.database()
    with Store(url) as s, psycopg.connect(url, autocommit=True) as admin:
        s.upsert_hello("sh-1", HELLO, 100.0)

        def end_session() -> None:
            pid = s.db.execute("SELECT pg_backend_pid()").fetchone()[0]
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

        end_session()
        with pytest.raises(dbapi.Error):
            s.count_reject("bad_json", "pb/x/telemetry", "not JSON", 1.0)
        s.count_reject("bad_json", "pb/x/telemetry", "not JSON", 2.0)  # (a new connection)
        assert s.rejects()["bad_json"]["count"] == 1
        # within a transaction
        with pytest.raises(dbapi.Error), s.transaction():
            s.add_event("sh-1", "log", None, "first", 3.0)
            end_session()
            s.add_event("sh-1", "log", None, "second", 4.0)
        assert not s.db.in_transaction
        assert s.events("sh-1") == []  # (neither: the transaction went as a whole)
        assert s.add_telemetry([TelemetryRow("sh-1", 5.0, None, 1, {"i": 1})]) == (1, [])


@pytest.mark.parametrize(("name", "encoding"), [("latin", "LATIN1"), ("ascii", "SQL_ASCII")])
def test_a_postgresql_database_not_in_utf8_is_refused_with_how_to_make_one(
    postgres: Postgres, name: str, encoding: str
) -> None:
    import psycopg

    with psycopg.connect(postgres.url(), autocommit=True) as admin:
        admin.execute(
            f"CREATE DATABASE {name} ENCODING '{encoding}' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'"
        )
    with pytest.raises(StoreError, match=f"encoding is {encoding}, not UTF8: make it with createdb -E UTF8"):
        Store(postgres.url(name))


def test_a_database_url_is_shown_without_its_password() -> None:
    assert dbapi.redacted("postgresql://pb:s3cret@db:5432/fleet") == "postgresql://pb:***@db:5432/fleet"
    assert (
        dbapi.redacted("postgresql://pb@db/fleet?sslmode=require&password=s3cret&x=1")
        == "postgresql://pb@db/fleet?sslmode=require&password=***&x=1"
    )


def test_placeholders_are_translated_outside_quotes_and_comments_only() -> None:
    sql = "SELECT 'a?b', \"c?\" -- what's ?\n FROM t WHERE x = ? AND y = :name AND z::text LIKE '5%'"
    assert dbapi._pg_sql(sql) == (
        "SELECT 'a?b', \"c?\" -- what's ?\n FROM t WHERE x = %s AND y = %(name)s AND z::text LIKE '5%%'"
    )


def test_a_hello_said_again_with_a_nul_in_its_reset_cause_is_one_boot(db_at: DbAt) -> None:
    with Store(db_at()) as s:
        for t in (100.0, 101.0, 102.0):
            s.upsert_hello("sh-1", HELLO | {"reset_cause": "po\x00wer"}, t)
        assert len(s.history("device_boots", "sh-1", 0.0, 200.0)) == 1


def test_exclusive_transactions_on_postgresql_wait_for_each_other(postgres: Postgres) -> None:
    """As SQLite's BEGIN IMMEDIATE: the second waits for the first to end,
    it never fails to be retried."""
    import threading

    url = postgres.database()
    with Store(url) as a, Store(url) as b:
        a.db.begin_exclusive()
        done = threading.Event()

        def second() -> None:
            b.db.begin_exclusive()
            b.db.execute("COMMIT")
            done.set()

        t = threading.Thread(target=second)
        t.start()
        assert not done.wait(0.5)  # (waiting)
        a.db.execute("COMMIT")
        assert done.wait(10)
        t.join()
