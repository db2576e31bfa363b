"""A device's record as the gateway keeps it, for its twin: its telemetry
(in the device's own time), the commands it carried out (the data the
gateway sent it, such as a thermostat's hourly prices, and the settings it
replied with), and what its last hello said of it (with the streams its
owner keeps back). Nothing here comes from
anywhere but the gateway's database.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from ..store import Store
from ..streams import withheld

DAYS = 7.0  # the record a twin is fitted on: at most the last week
# ops whose effect the twin replays (data, settings) or whose reply tells the settings
COMMAND_OPS = ("data.set", "config.set", "config.get", "status", "feature.enable", "feature.disable")


@dataclass
class Command:
    """A command the device carried out (its reply said ok), at the time it
    replied (the gateway's clock)."""

    t: float
    op: str
    args: dict[str, Any]
    result: Any

    def to_json(self) -> dict[str, Any]:
        return {"t": self.t, "op": self.op, "args": self.args, "result": self.result}


@dataclass
class History:
    device: str
    model: str
    board: str | None
    utc_offset_min: int
    telemetry_s: float
    features: dict[str, Any]  # the hello's: name -> {"version", "enabled", "running", "error"?}
    ota: dict[str, Any] | None  # the hello's: the running set
    caps: list[str]
    rows: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # (device time, telemetry)
    commands: list[Command] = field(default_factory=list)
    withheld: dict[str, str] = field(default_factory=dict)  # what its hello says it keeps back

    @property
    def start(self) -> float:
        return self.rows[0][0] if self.rows else 0.0

    @property
    def end(self) -> float:
        return self.rows[-1][0] if self.rows else 0.0

    def data_sent(self, key: str) -> list[tuple[float, Any]]:
        """(time, value) of every data.set of key the device took, in order."""
        return [
            (c.t, c.args.get("value"))
            for c in self.commands
            if c.op == "data.set" and c.args.get("key") == key
        ]

    def configs(self, before: float | None = None) -> dict[str, dict[str, Any]]:
        """The features' settings as the device last replied them (config.set,
        config.get, status), before a time if given: feature -> settings."""
        out: dict[str, dict[str, Any]] = {}
        for c in self.commands:
            if before is not None and c.t > before:
                break
            result = c.result
            if c.op == "status" and isinstance(result, dict):
                result = result.get("config")
            if c.op in ("config.set", "config.get", "status") and isinstance(result, dict):
                for name, cfg in result.items():
                    if isinstance(cfg, dict):
                        out[str(name)] = dict(cfg)
        return out


COMMANDS_BEFORE_S = 2 * 86400.0  # commands read from before the record: the last data of each key sent


def load(store: Store, dev: str, until: float | None = None, days: float = DAYS) -> History | None:
    """The record of device dev over the `days` before `until` (default:
    its newest telemetry); None for a device the gateway does not know."""
    d = store.device(dev)
    if d is None:
        return None
    hello = d.hello
    h = History(
        device=dev,
        model=d.model or "?",
        board=d.board,
        utc_offset_min=int(hello.get("utc_offset_min") or 0),
        telemetry_s=float(d.telemetry_s or 10.0),
        features=dict(d.features),
        ota=d.ota,
        caps=[str(c) for c in hello.get("caps", [])],
        withheld=withheld(hello),
    )
    if until is None:
        row = store.db.execute("SELECT max(received) FROM telemetry WHERE device = ?", (dev,)).fetchone()
        if row is None or row[0] is None:
            return h
        until = float(row[0])
    since = until - days * 86400.0
    # (of its owner's time only: a previous owner's household is not the twin's)
    row = store.db.execute("SELECT since FROM device_owners WHERE device = ?", (dev,)).fetchone()
    owned = float(row[0]) if row is not None else -math.inf
    since = max(since, owned)
    for received, ts, data in store.db.tuples(
        "SELECT received, ts, data FROM telemetry WHERE device = ? AND received >= ? AND received <= ?"
        " ORDER BY received, id",
        (dev, since, until),
    ):
        t = float(ts) if ts is not None else float(received)
        if h.rows and t <= h.rows[-1][0]:
            continue  # a clock stepped back, or a duplicate: the record only goes forward
        try:
            msg = json.loads(data)
        except ValueError:
            continue
        if isinstance(msg, dict):
            h.rows.append((t, msg))
    marks = ",".join("?" for _ in COMMAND_OPS)
    for replied, sent, op, args, reply in store.db.tuples(
        f"SELECT replied, sent, op, args, reply FROM commands WHERE device = ? AND status = 'ok'"
        f" AND op IN ({marks}) AND sent >= ? AND sent <= ? ORDER BY sent, rowid",
        (dev, *COMMAND_OPS, max(owned, since - COMMANDS_BEFORE_S), until),
    ):
        try:
            a = json.loads(args) if args else {}
            r = json.loads(reply) if reply else {}
        except ValueError:
            continue
        if isinstance(a, dict) and isinstance(r, dict):
            h.commands.append(
                Command(float(replied if replied is not None else sent), op, a, r.get("result"))
            )
    return h
