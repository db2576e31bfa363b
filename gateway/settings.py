"""What the maker and the owner set of a device, apart from what it says of
itself (docs/rollouts.md 2): its channel, its tags, the owner's update
policy (auto, ask, window) with the daily window. Kept in the
``device_settings`` table (schema version 5); a device without a row has the
defaults (stable, no tags, auto). The owner's say on each release is in
gateway/decisions.py (its column `approved` moved there in schema version 8).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import SettingsError
from .store import Store

CHANNELS = ("stable", "beta", "canary")
POLICIES = ("auto", "ask", "window")
MAX_TAGS = 32
_TAG = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")
_SCHEMA = 5  # the store's version that has the table
_CLOCK = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")


@dataclass(frozen=True)
class Window:
    """A daily maintenance window in the device's local time, minutes since
    midnight; it runs past midnight when it ends before it starts."""

    start: int
    end: int

    @classmethod
    def parse(cls, text: str) -> Window:
        """From ``HH:MM-HH:MM``. Raises SettingsError."""
        parts = text.split("-") if isinstance(text, str) else []
        ends = [_CLOCK.fullmatch(p.strip()) for p in parts]
        if len(parts) != 2 or not all(ends):
            raise SettingsError(f"a window is HH:MM-HH:MM (00:00 to 23:59), not {text!r}")
        start, end = (int(m.group(1)) * 60 + int(m.group(2)) for m in ends if m)
        if start == end:
            raise SettingsError(f"the window {text!r} is empty: it starts where it ends")
        return cls(start, end)

    def __str__(self) -> str:
        return f"{self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d}"

    def contains(self, now: float, utc_offset_min: int) -> bool:
        """Whether the device's local time at now (a Unix time) is inside."""
        minute = int((now // 60 + utc_offset_min) % 1440)
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def opens_in(self, now: float, utc_offset_min: int) -> float:
        """Seconds from now until the window next opens (0 inside it)."""
        if self.contains(now, utc_offset_min):
            return 0.0
        local = (now + 60 * utc_offset_min) % 86400
        return (self.start * 60 - local) % 86400


@dataclass(frozen=True)
class DeviceSettings:
    device: str
    channel: str = "stable"
    tags: frozenset[str] = field(default_factory=frozenset)
    policy: str = "auto"
    window: Window | None = None
    updated: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "tags": sorted(self.tags),
            "policy": self.policy,
            "window": None if self.window is None else str(self.window),
            "updated": self.updated,
        }


def changed(
    current: DeviceSettings,
    channel: str | None = None,
    tag: list[str] | None = None,
    untag: list[str] | None = None,
    policy: str | None = None,
    window: str | None = None,
) -> DeviceSettings:
    """current with what was asked changed (tag: tags to add, untag: to
    remove), checked. Raises SettingsError."""
    new = current
    if channel is not None:
        if channel not in CHANNELS:
            raise SettingsError(f"channel must be one of {', '.join(CHANNELS)}, not {channel!r}")
        new = replace(new, channel=channel)
    if tag or untag:
        for t in (tag or []) + (untag or []):
            if not isinstance(t, str) or not _TAG.fullmatch(t):
                raise SettingsError(f"a tag is 1-32 of a-z 0-9 _ . - (a letter or digit first), not {t!r}")
        kept = (new.tags | set(tag or [])) - set(untag or [])
        if len(kept) > MAX_TAGS:
            raise SettingsError(f"a device has at most {MAX_TAGS} tags ({len(kept)} asked)")
        new = replace(new, tags=frozenset(kept))
    if window is not None:
        new = replace(new, window=Window.parse(window))
    if policy is not None:
        if policy not in POLICIES:
            raise SettingsError(f"policy must be one of {', '.join(POLICIES)}, not {policy!r}")
        new = replace(new, policy=policy)
    if new.policy == "window" and new.window is None:
        raise SettingsError("the policy window needs a window (HH:MM-HH:MM, the device's local time)")
    return new


class SettingsTable:
    """The ``device_settings`` table."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, dev: str) -> DeviceSettings:
        if self.store.schema < _SCHEMA:  # (a database read as it is, before the gateway upgrades it)
            return DeviceSettings(dev)
        row = self.store.db.execute("SELECT * FROM device_settings WHERE device = ?", (dev,)).fetchone()
        return DeviceSettings(dev) if row is None else _from_row(row)

    def all(self) -> dict[str, DeviceSettings]:
        """Every device that has a row, by id."""
        if self.store.schema < _SCHEMA:
            return {}
        return {r["device"]: _from_row(r) for r in self.store.db.execute("SELECT * FROM device_settings")}

    def save(self, s: DeviceSettings, now: float) -> DeviceSettings:
        s = replace(s, updated=now)
        self.store.db.execute(
            'INSERT INTO device_settings (device, channel, tags, policy, "window", updated)'
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device) DO UPDATE SET channel = excluded.channel,"
            ' tags = excluded.tags, policy = excluded.policy, "window" = excluded."window",'
            " updated = excluded.updated",
            (
                s.device,
                s.channel,
                json.dumps(sorted(s.tags)),
                s.policy,
                None if s.window is None else str(s.window),
                now,
            ),
        )
        return s


def _from_row(row: Any) -> DeviceSettings:
    try:
        tags = json.loads(row["tags"])
    except ValueError:
        tags = []
    window = None
    if row["window"]:
        try:
            window = Window.parse(row["window"])
        except SettingsError:
            window = None
    return DeviceSettings(
        device=row["device"],
        channel=row["channel"],
        tags=frozenset(t for t in tags if isinstance(t, str)) if isinstance(tags, list) else frozenset(),
        policy=row["policy"],
        window=window,
        updated=row["updated"],
    )
