"""The owner's say on each update of a device (docs/rollouts.md 8.1): for one
release, install `now` (the owner's yes; a device with a maintenance window
may go outside it), `later` (not before a time, then as its policy says),
or `never` (the release is not offered to the device). Kept in the
``device_decisions`` table (schema version 8), one row per device and
release; a new decision replaces the one before.

`parse_until` and `decided` are pure (the time is passed in); the table only
reads and writes rows.
"""

from __future__ import annotations

import datetime
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from .db import upsert
from .errors import DecisionError
from .numbers import finite_number
from .store import Store

_DECISION_COLUMNS = ("device", "release", "decision", "until", "at")

DECISIONS = ("now", "later", "never")
MAX_LATER_S = 90 * 86400.0  # how far ahead `later` may put an update
# the reasons of an offer not installed yet that the owner's `never` or `later` ended
DECLINED = "cancelled: declined by the owner"
POSTPONED = "cancelled: put off by the owner"
CANCELS = {"never": DECLINED, "later": POSTPONED}
_SCHEMA = 8  # the store's version that has the table
_DURATION = re.compile(r"(\d{1,6}(?:\.\d{1,3})?)\s*([mhd])")
_UNITS = {"m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True)
class Decision:
    """What the owner decided of one release for one device."""

    device: str
    release: str  # the release id
    decision: str  # now, later, never
    until: float | None  # later: not before this time (Unix seconds)
    at: float  # when it was decided

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def holds(self, now: float) -> bool:
        """Whether it holds the update back at now: never, or a later not yet due."""
        return self.decision == "never" or (
            self.decision == "later" and (self.until is None or now < self.until)
        )


def parse_until(value: object, now: float) -> float:
    """When a `later` ends, as Unix seconds: an ISO 8601 date-time with its
    offset (`2026-12-06T07:30:00+01:00`, `...Z`), a Unix time, or a
    duration from now (`90m`, `6h`, `3d`); in the future and at most
    MAX_LATER_S ahead. Raises DecisionError bad_decision."""
    when: float | None = None
    if finite_number(value):
        when = float(value)  # type: ignore[arg-type]  # (a number: finite_number)
    elif isinstance(value, str) and (m := _DURATION.fullmatch(value.strip())):
        when = now + float(m.group(1)) * _UNITS[m.group(2)]
    elif isinstance(value, str) and len(value) <= 40:
        try:
            t = datetime.datetime.fromisoformat(value.strip())
        except ValueError:
            t = None
        if t is not None and t.tzinfo is None:
            raise DecisionError(f"until {value!r} has no offset: add the time zone (Z, +01:00)")
        when = t.timestamp() if t is not None else None
    if when is None or not math.isfinite(when):
        raise DecisionError(
            f"until must be an ISO 8601 date-time with its offset, a Unix time or a duration "
            f"such as 6h or 3d, not {str(value)[:40]!r}"
        )
    if when <= now:
        raise DecisionError(f"until must be in the future: {str(value)[:40]!r} has passed")
    if when - now > MAX_LATER_S:
        days = f"{MAX_LATER_S / 86400:.0f}"
        raise DecisionError(f"until may be at most {days} days ahead, not {str(value)[:40]!r}")
    return when


def decided(device: str, release: str, decision: object, until: object, now: float) -> Decision:
    """The decision asked, checked: `later` needs `until`, the others take
    none. Raises DecisionError bad_decision."""
    if decision not in DECISIONS:
        raise DecisionError(f"decision must be one of {', '.join(DECISIONS)}, not {str(decision)[:20]!r}")
    if decision == "later":
        if until is None:
            raise DecisionError("later needs until: when the update may go (a date-time, or 6h, 3d)")
        return Decision(device, release, "later", parse_until(until, now), now)
    if until is not None:
        raise DecisionError(f"until goes with later only, not with {decision}")
    return Decision(device, release, str(decision), None, now)


class DecisionTable:
    """The ``device_decisions`` table."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _ready(self) -> bool:
        return self.store.schema >= _SCHEMA  # (an old database read as it is has none)

    def get(self, dev: str, release: str) -> Decision | None:
        if not self._ready():
            return None
        row = self.store.db.execute(
            "SELECT * FROM device_decisions WHERE device = ? AND release = ?", (dev, release)
        ).fetchone()
        return None if row is None else Decision(**dict(row))

    def of_release(self, release: str) -> dict[str, Decision]:
        """Every device's decision on release, by device."""
        if not self._ready():
            return {}
        rows = self.store.db.execute("SELECT * FROM device_decisions WHERE release = ?", (release,))
        return {r["device"]: Decision(**dict(r)) for r in rows}

    def of_device(self, dev: str) -> dict[str, Decision]:
        """dev's decisions, by release id."""
        if not self._ready():
            return {}
        rows = self.store.db.execute("SELECT * FROM device_decisions WHERE device = ?", (dev,))
        return {r["release"]: Decision(**dict(r)) for r in rows}

    def save(self, d: Decision) -> Decision:
        self.store.db.execute(
            upsert("device_decisions", _DECISION_COLUMNS, ("device", "release")),
            (d.device, d.release, d.decision, d.until, d.at),
        )
        return d
