"""A simulated device's record in a gateway's store, as the gateway would
have kept it had the device reported to it: its hello, its telemetry and
the commands it carried out (the daily price tables sent to a thermostat).
The twin's tests and benchmark (benchmarks/twin_accuracy.py) fit twins to
these records, and run the same devices on after (simulator/stepped.py) to
see what they then actually do.
"""

from __future__ import annotations

import json
import math
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.paths import firmware_dir
from gateway.provision import board_for
from gateway.store import Store, TelemetryRow

from .physics import Room, Skin
from .stepped import shirt_on_a_wearer, thermostat_in_a_room

DAY_S = 86400.0


@dataclass
class Recorded:
    device: str
    seed: int
    start: float
    seconds: float
    config: dict[str, Any]
    data: list[tuple[float, str, Any]]  # what the gateway sent: (time, key, value)
    room: Room | None  # the room as it stands at the record's end (its truth)
    skin: Skin | None = None  # a shirt's wearer, likewise
    addons: tuple[str, ...] = ()  # the add-ons plugged into its board


def daily_prices(
    seed: int, start: float, seconds: float, room: Room | None = None
) -> list[tuple[float, str, Any]]:
    """The day's price table sent a minute before each midnight (UTC, the
    devices' local time) from the day before start to the end, of room (else
    room `seed`)."""
    room = Room.random(random.Random(seed)) if room is None else room
    first = math.floor(start / DAY_S)
    last = math.floor((start + seconds) / DAY_S)
    return [(d * DAY_S - 60.0, "prices", room.day_prices(d * DAY_S + 1.0)) for d in range(first, last + 1)]


def hello(dev: str, model: str = "thermostat", **over: Any) -> dict[str, Any]:
    """The hello of a device of `model` running its factory features."""
    board = board_for(model)
    shipped = {
        f: json.loads((firmware_dir() / "features" / f / "manifest.json").read_text())["version"]
        for f in board["features"]
    }
    msg: dict[str, Any] = {
        "v": 1,
        "dev": dev,
        "model": model,
        "board": board["board"],
        "runtime": "0.1.0",
        "api": 1,
        "features": {f: {"version": v, "enabled": True, "running": True} for f, v in shipped.items()},
        "caps": sorted(board["capabilities"]),
        "heap_free": -1,
        "reset_cause": "power_on",
        "boot_count": 1,
        "keepalive": 30,
        "telemetry_s": 10.0,
        "utc_offset_min": 0,
        "ota": {"counter": 0, "manifest": None, "state": "factory", "root": 1},
    }
    return msg | over


def add_command(store: Store, dev: str, t: float, op: str, args: dict[str, Any], result: Any) -> None:
    """A command the gateway sent at t and the device carried out."""
    cmd = secrets.token_hex(8)
    store.add_command(cmd, dev, op, args, t)
    store.finish_command(
        cmd, dev, "ok", {"v": 1, "dev": dev, "id": cmd, "ok": True, "result": result}, t + 0.2
    )


def thermostat_record(
    store: Store,
    dev: str,
    seed: int,
    start: float,
    seconds: float,
    work: Path,
    *,
    config: dict[str, Any] | None = None,
    prices: bool = True,
    room_temp: float = 21.0,
    hello_over: dict[str, Any] | None = None,
    data: Sequence[tuple[float, str, Any]] | None = None,
    addons: Sequence[str] = (),
    room: Room | None = None,
) -> Recorded:
    """Thermostat dev in room `seed` from start for `seconds`, recorded in
    store: its hello, its telemetry every 10 s, and (prices) the daily price
    tables the gateway sent it. work: a new folder for the device's flash;
    addons: the add-ons plugged into its board (its hello says them); room:
    the room itself (else Room.random(seed)), left at the record's end: a
    virtual device living on in it (simulator/device.py `plant`) carries the
    record on without a jump."""
    said = (
        {"caps": sorted({"humidity", "relay", "temperature", *addons}), "addons": sorted(addons)}
        if addons
        else {}
    )
    store.upsert_hello(dev, hello(dev, **(said | (hello_over or {}))), start)
    room = Room.random(random.Random(seed)) if room is None else room
    sent = list(data) if data is not None else (daily_prices(seed, start, seconds, room) if prices else [])
    for t, key, value in sent:
        add_command(store, dev, t, "data.set", {"key": key, "value": value}, {"key": key})
    rows: list[TelemetryRow] = []
    steps = thermostat_in_a_room(
        work, seed, start, seconds, config=config, room_temp=room_temp, data=sent, room=room, addons=addons
    )
    for seq, (t, tel) in enumerate(steps, start=1):
        rows.append(
            TelemetryRow(dev, t, t, seq, {k: v for k, v in tel.items() if k not in ("v", "dev", "seq", "ts")})
        )
        if len(rows) >= 5000:
            store.add_telemetry(rows)
            rows = []
    store.add_telemetry(rows)
    return Recorded(dev, seed, start, seconds, dict(config or {}), sent, room, addons=tuple(addons))


def shirt_record(
    store: Store,
    dev: str,
    seed: int,
    start: float,
    seconds: float,
    work: Path,
    *,
    config: dict[str, Any] | None = None,
    hello_over: dict[str, Any] | None = None,
) -> Recorded:
    """Shirt dev on wearer `seed` from start for `seconds`, recorded in
    store: its hello and its telemetry every 10 s."""
    store.upsert_hello(dev, hello(dev, "shirt", **(hello_over or {})), start)
    skin = Skin.random(random.Random(seed))
    rows: list[TelemetryRow] = []
    steps = shirt_on_a_wearer(work, seed, start, seconds, config=config, skin=skin)
    for seq, (t, tel) in enumerate(steps, start=1):
        rows.append(
            TelemetryRow(dev, t, t, seq, {k: v for k, v in tel.items() if k not in ("v", "dev", "seq", "ts")})
        )
        if len(rows) >= 5000:
            store.add_telemetry(rows)
            rows = []
    store.add_telemetry(rows)
    return Recorded(dev, seed, start, seconds, dict(config or {}), [], None, skin)


def shirt_after(
    rec: Recorded, work: Path, features_from: Path
) -> tuple[list[tuple[float, dict[str, Any]]], Skin]:
    """What shirt rec does over the same span on the same wearer, with the
    same settings, running the features in features_from instead."""
    skin = Skin.random(random.Random(rec.seed))
    rows = list(
        shirt_on_a_wearer(
            work, rec.seed, rec.start, rec.seconds, config=rec.config, features_from=features_from, skin=skin
        )
    )
    return rows, skin


def thermostat_after(
    rec: Recorded, work: Path, features_from: Path, *, room_temp: float = 21.0
) -> tuple[list[tuple[float, dict[str, Any]]], Room]:
    """What thermostat rec does over the same span in the same room, with
    the same settings and data, running the features in features_from
    instead: (its telemetry, the room at the end)."""
    room = Room.random(random.Random(rec.seed))
    rows = list(
        thermostat_in_a_room(
            work,
            rec.seed,
            rec.start,
            rec.seconds,
            config=rec.config,
            room_temp=room_temp,
            data=rec.data,
            features_from=features_from,
            room=room,
            addons=rec.addons,
        )
    )
    return rows, room
