"""How long the gateway keeps what a device shares (docs/protocol.md 12):
its owner's period for the device, and a stream's own period where the
owner gave one (shorter, longer, or no limit); and what of a stored
telemetry row outlives them.

A telemetry row holds the values of many streams taken at one time, so a
stream whose period is shorter than the others' loses its values from the
row (the row stays with the rest); a row with no value left goes. Pure:
no database, no clock (`age_s` is passed in); the store applies it
(Store.expire_shared).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .numbers import finite_number
from .streams import Stream

MAX_DAYS = 36500.0  # a hundred years: beyond, say no limit
DAY_S = 86400.0
FOREVER = "forever"  # a stream's own period: kept with no limit, whatever the device's
GROUPS = ("sensors", "actuators")  # (and features.<feature>.<field>)


class RetentionError(ValueError):
    """A period that cannot be; the message says which and why."""


@dataclass(frozen=True)
class Periods:
    """A device's periods in days: its own (None: no limit of the owner's),
    and each stream's own (None: kept with no limit); a stream without one
    keeps the device's."""

    device: float | None = None
    streams: Mapping[str, float | None] = field(default_factory=dict)

    def of(self, path: str) -> float | None:
        """The days a stream's values are kept (None: no limit)."""
        return self.streams.get(path, self.device)

    def own(self, path: str) -> float | str | None:
        """A stream's own period as the owner set it: days, FOREVER, or None (the device's)."""
        if path not in self.streams:
            return None
        days = self.streams[path]
        return FOREVER if days is None else days

    @property
    def whole_row_days(self) -> float | None:
        """The age in days after which every value of a row has gone (None:
        some stream's values are kept with no limit)."""
        if self.device is None or None in self.streams.values():
            return None
        return max([self.device, *(d for d in self.streams.values() if d is not None)])

    @property
    def limited(self) -> bool:
        """Whether anything of the device is ever deleted."""
        return self.device is not None or any(d is not None for d in self.streams.values())


def _days(value: Any, what: str) -> float:
    if not finite_number(value):
        raise RetentionError(f"{what} must be a number of days in (0, {MAX_DAYS:g}], not {str(value)[:20]!r}")
    if not 0 < value <= MAX_DAYS:
        raise RetentionError(f"{what} must be a number of days in (0, {MAX_DAYS:g}], not {value:g}")
    return float(value)


def check_device(value: Any) -> float | None:
    """The device's period as asked (`retention_days`): days, or None (no
    limit). Raises RetentionError."""
    return None if value is None else _days(value, "retention_days")


def check_streams(streams: Iterable[Stream], asked: Any) -> dict[str, float | str | None]:
    """Each stream's own period as asked (`retention`): path -> days, FOREVER
    (no limit), or None (back to the device's); only the streams a device
    shares through telemetry have one. Raises RetentionError."""
    by_path = {s.path: s for s in streams}
    if not isinstance(asked, dict) or not asked:
        raise RetentionError("retention must be a non-empty object of stream: days, 'forever' or null")
    out: dict[str, float | str | None] = {}
    for path, value in asked.items():
        s = by_path.get(path)
        if s is None:
            known = ", ".join(p for p, x in by_path.items() if not x.needed)
            raise RetentionError(f"no stream {str(path)[:64]!r} on this device (streams: {known})")
        if s.needed:
            raise RetentionError(f"{path} is not stored as telemetry: it has no period of its own")
        out[path] = value if value is None or value == FOREVER else _days(value, f"retention of {path}")
    return out


def _young(days: float | None, age_s: float) -> bool:
    return days is None or age_s <= days * DAY_S


def kept(data: Mapping[str, Any], age_s: float, periods: Periods) -> dict[str, Any] | None:
    """A telemetry row `age_s` old as it may stay: without the values of
    streams kept for less than that; None when no value is left (the row
    goes). What is not a stream's value (v, dev, seq, ts) stays with it."""
    out = dict(data)
    left = 0
    for group in GROUPS:
        values = data.get(group)
        if isinstance(values, dict):
            out[group] = {k: v for k, v in values.items() if _young(periods.of(f"{group}.{k}"), age_s)}
            left += len(out[group])
    features = data.get("features")
    if isinstance(features, dict):
        reports: dict[str, Any] = {}
        for name, report in features.items():
            if isinstance(report, dict):
                fields = {
                    k: v for k, v in report.items() if _young(periods.of(f"features.{name}.{k}"), age_s)
                }
                if fields:
                    reports[name] = fields
            elif _young(periods.of(f"features.{name}"), age_s):
                reports[name] = report
        out["features"] = reports
        left += sum(len(r) if isinstance(r, dict) else 1 for r in reports.values())
    return out if left else None
