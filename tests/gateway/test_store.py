"""The SQLite store: registry, telemetry batches, and refusing what is not ours."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.errors import StoreError
from gateway.store import Store, TelemetryRow

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


def test_registry_survives_reopening(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
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
    assert (db.stat().st_mode & 0o777) == 0o600


def test_hello_again_keeps_first_seen(tmp_path: Path) -> None:
    with Store(tmp_path / "gw.db") as s:
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


def test_reject_counters_accumulate(tmp_path: Path) -> None:
    with Store(tmp_path / "gw.db") as s:
        s.count_reject("bad_json", "pb/x/telemetry", "not JSON", 1.0)
        s.count_reject("bad_json", "pb/y/telemetry", "not JSON either", 2.0)
        assert s.rejects()["bad_json"]["count"] == 2
        assert s.rejects()["bad_json"]["last_topic"] == "pb/y/telemetry"
