"""One thermostat (or shirt) stepped by hand, without a network or an event loop: the
firmware's own runtime (firmware.pb.runtime.Device) with the thermostat
feature (patched, if asked) on the simulator's HAL, heating a seeded room
(simulator/physics.Room). Each step samples and reports as the device does;
its telemetry comes out as the gateway stores it.

The metric tests (tests/gateway/test_metrics.py) and the judge benchmark
(benchmarks/judge_quality.py) run it; a few thousand steps of simulated
time take a second of real time, whatever the clock says.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from firmware.pb.runtime import Device
from firmware.pb.store import Store
from gateway.broker import BrokerUrl
from gateway.paths import firmware_dir
from gateway.provision import board_for, make_config

from .clock import SimClock
from .hal import SimHal
from .loader import import_feature
from .physics import Room, Skin

STEP_S = 10.0  # the device samples and reports every 10 s


class _Clock(SimClock):
    """Time that moves only when the steps move it."""

    def __init__(self, t: float) -> None:
        super().__init__(start=t)
        self.t = t

    def now(self) -> float:
        return self.t


class _Link:
    """The device's MQTT client, standing in: it keeps what the runtime publishes."""

    up = True

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def publish(self, topic: str, data: bytes, qos: int, retain: bool) -> bool:
        self.sent.append((topic, data))
        return True

    def subscribe(self, topic: str, qos: int) -> None:
        pass


def thermostat_in_a_room(
    base: Path,
    seed: int,
    start: float,
    seconds: float,
    *,
    config: dict[str, Any] | None = None,
    patch: tuple[str, str] | None = None,
    room_temp: float | None = None,
    features_from: Path | None = None,
    data: Sequence[tuple[float, str, Any]] = (),
    room: Room | None = None,
    addons: Sequence[str] = (),
) -> Iterator[tuple[float, dict[str, Any]]]:
    """(time, telemetry) of a thermostat in room `seed` (Room.random), every
    STEP_S from start + STEP_S for `seconds`. base: a new folder for the
    device's flash; config: the thermostat's settings (e.g. its hysteresis);
    patch: (old, new) text replaced in the feature's code, which must hold
    old; room_temp: the room's temperature at start (else the seeded one);
    features_from: a folder of feature folders to run (default: the
    factory thermostat alone); data: (time, key, value) the gateway sends
    (data.set) at those times; room: the room itself (else Room.random(seed)),
    so that the caller can read its truth; addons: the add-ons plugged into
    its board (docs/protocol.md 13). Raises ValueError for a patch that does
    not apply."""
    features = base / "features"
    if features_from is None:
        shutil.copytree(firmware_dir() / "features" / "thermostat", features / "thermostat")
    else:
        shutil.copytree(features_from, features, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if patch is not None:
        code = features / "thermostat" / "__init__.py"
        text = code.read_text()
        if patch[0] not in text:
            raise ValueError(f"the thermostat's code has no {patch[0]!r} to patch")
        code.write_text(text.replace(patch[0], patch[1]))
    if room is None:
        room = Room.random(random.Random(seed))
    if room_temp is not None:
        room.temp = room_temp
    yield from _stepped(base, "thermostat", f"th-{seed}", room, start, seconds, config, data, addons)


def shirt_on_a_wearer(
    base: Path,
    seed: int,
    start: float,
    seconds: float,
    *,
    config: dict[str, Any] | None = None,
    features_from: Path | None = None,
    skin: Skin | None = None,
    humidity: float | None = None,
) -> Iterator[tuple[float, dict[str, Any]]]:
    """(time, telemetry) of a shirt on wearer `seed` (Skin.random), stepped
    as thermostat_in_a_room steps a thermostat: every STEP_S from start +
    STEP_S for `seconds`. config: the vent's settings; features_from: a
    folder of feature folders to run (default: the factory vent); skin:
    the wearer itself (else Skin.random(seed)); humidity: the skin's at
    start (else the seeded one)."""
    features = base / "features"
    if features_from is None:
        shutil.copytree(firmware_dir() / "features" / "vent", features / "vent")
    else:
        shutil.copytree(features_from, features, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if skin is None:
        skin = Skin.random(random.Random(seed))
    if humidity is not None:
        skin.humidity = humidity
    yield from _stepped(base, "vent", f"sh-{seed}", skin, start, seconds, config)


def _stepped(
    base: Path,
    feature: str,
    dev_id: str,
    plant: Room | Skin,
    start: float,
    seconds: float,
    config: dict[str, Any] | None,
    data: Sequence[tuple[float, str, Any]] = (),
    addons: Sequence[str] = (),
) -> Iterator[tuple[float, dict[str, Any]]]:
    """The device of the model whose factory feature is `feature`, its
    features in base/features, on plant, stepped from start: its telemetry."""
    board = board_for("thermostat" if feature == "thermostat" else "shirt")
    clock = _Clock(start)
    plant.advance(clock.t)
    link = _Link()
    hal = SimHal(board, plant, clock)
    hal.plugged_in = set(addons)
    dev = Device(
        make_config(dev_id, board, BrokerUrl("127.0.0.1", 1), "pw"),
        hal,
        Store(str(base / "data")),
        str(base / "features"),
        importer=import_feature,
        client=link,
        log=lambda d, m: None,
    )
    dev.boot()
    if config:
        done = dev.execute("config.set", {"feature": feature, "values": config})
        if not done.get("ok"):
            raise ValueError(f"the {feature} refused {config}: {done}")
    sends = sorted(data, key=lambda d: d[0])
    j = 0
    for i in range(1, int(seconds / STEP_S) + 1):
        clock.t = start + i * STEP_S
        while j < len(sends) and sends[j][0] <= clock.t:
            done = dev.execute("data.set", {"key": sends[j][1], "value": sends[j][2]})
            if not done.get("ok"):
                raise ValueError(f"the device refused data {sends[j][1]}: {done}")
            j += 1
        dev.sample()
        dev.publish_telemetry()
        topic, payload = link.sent.pop()
        if topic.endswith("/telemetry"):
            yield clock.t, json.loads(payload)
        link.sent.clear()
