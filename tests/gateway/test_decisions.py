"""The owner's decision on an update (gateway/decisions.py): now, later
until a time (ISO 8601 with its offset, a Unix time or a duration; in the
future, at most 90 days ahead), never; each refused clearly when it cannot
be, and kept per device and release in the store."""

from __future__ import annotations

import pytest

from gateway.decisions import MAX_LATER_S, DecisionTable, decided, parse_until
from gateway.errors import DecisionError
from gateway.store import SCHEMA_VERSION, Store

from ..conftest import DbAt
from ..support.schema import as_of

NOW = 1_900_000_000.0  # 2030-03-17 17:46:40 UTC


def test_until_is_a_date_time_with_its_offset_a_unix_time_or_a_duration() -> None:
    assert parse_until("2030-03-18T17:46:40Z", NOW) == NOW + 86400
    assert parse_until("2030-03-18T18:46:40+01:00", NOW) == NOW + 86400
    assert parse_until(NOW + 5, NOW) == NOW + 5
    assert parse_until("90m", NOW) == NOW + 5400
    assert parse_until("6h", NOW) == NOW + 6 * 3600
    assert parse_until("3d", NOW) == NOW + 3 * 86400


@pytest.mark.parametrize(
    ("until", "words"),
    [
        ("2030-03-18T17:46:40", "has no offset"),
        ("tomorrow", "must be an ISO 8601 date-time"),
        (True, "must be an ISO 8601 date-time"),
        (float("nan"), "must be an ISO 8601 date-time"),
        ([1], "must be an ISO 8601 date-time"),
        (NOW, "must be in the future"),
        ("2020-01-01T00:00:00Z", "must be in the future"),
        ("91d", "at most 90 days ahead"),
        (NOW + MAX_LATER_S + 1, "at most 90 days ahead"),
        ("x" * 10000, "must be an ISO 8601 date-time"),
        (10**400, "must be an ISO 8601 date-time"),  # (JSON's integers have any length: no float holds it)
    ],
)
def test_an_until_that_cannot_be_is_refused(until: object, words: str) -> None:
    with pytest.raises(DecisionError) as e:
        parse_until(until, NOW)
    assert e.value.code == "bad_decision" and words in str(e.value)


def test_later_needs_its_time_and_the_others_take_none() -> None:
    assert decided("th-1", "r" * 64, "later", "6h", NOW).until == NOW + 6 * 3600
    assert decided("th-1", "r" * 64, "never", None, NOW).until is None
    for decision, until, words in [
        ("later", None, "later needs until"),
        ("now", "6h", "until goes with later only"),
        ("maybe", None, "decision must be one of now, later, never"),
        (None, None, "decision must be one of"),
    ]:
        with pytest.raises(DecisionError, match=words):
            decided("th-1", "r" * 64, decision, until, NOW)


def test_never_and_a_later_not_yet_due_hold_an_update_back() -> None:
    later = decided("th-1", "r" * 64, "later", "1h", NOW)
    assert later.holds(NOW) and later.holds(NOW + 3599) and not later.holds(NOW + 3600)
    assert decided("th-1", "r" * 64, "never", None, NOW).holds(NOW + 10**9)
    assert not decided("th-1", "r" * 64, "now", None, NOW).holds(NOW)


def test_a_decision_replaces_the_one_before_and_is_kept_per_device_and_release(db_at: DbAt) -> None:
    with Store(db_at()) as store:
        table = DecisionTable(store)
        table.save(decided("th-1", "a" * 64, "later", "1d", NOW))
        table.save(decided("th-1", "a" * 64, "never", None, NOW + 1))
        table.save(decided("th-2", "a" * 64, "now", None, NOW + 2))
        table.save(decided("th-1", "b" * 64, "now", None, NOW + 3))
    with Store(db_at(), readonly=True) as store:
        table = DecisionTable(store)
        d = table.get("th-1", "a" * 64)
        assert d is not None and (d.decision, d.until, d.at) == ("never", None, NOW + 1)
        assert sorted(table.of_release("a" * 64)) == ["th-1", "th-2"]
        assert sorted(table.of_device("th-1")) == ["a" * 64, "b" * 64]
        assert table.get("th-3", "a" * 64) is None


def test_an_approval_of_the_schema_before_becomes_the_decision_now(db_at: DbAt) -> None:
    db = db_at()
    with Store(db) as s:
        as_of(s, 8)
        s.db.execute(
            "INSERT INTO device_settings (device, policy, approved, updated) VALUES ('th-1', 'ask', ?, ?)",
            ("c" * 64, NOW),
        )
    with Store(db) as s:
        assert s.schema == SCHEMA_VERSION
        d = DecisionTable(s).get("th-1", "c" * 64)
        assert d is not None and (d.decision, d.until, d.at) == ("now", None, NOW)
        assert s.db.execute("SELECT approved FROM device_settings").fetchone()[0] is None
