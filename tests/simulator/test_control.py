"""The products' control loops, end to end: the firmware's own features run
in virtual devices on the session's Mosquitto, with the simulated clock
running fast, and the physics' ground truth (not the devices' telemetry)
says whether they hold the plant where they should."""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import functools
import itertools
import math
import random
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from simulator.clock import SimClock
from simulator.device import VirtualDevice
from simulator.physics import Room, Skin

from ..conftest import unique_id
from ..support.mosquitto import Mosquitto
from ..support.wait import async_wait_for

pytestmark = [pytest.mark.slow, pytest.mark.long]

MONDAY = float(calendar.timegm((2024, 1, 15, 0, 0, 0)))
STEP_S = 0.02  # real seconds between physics steps (the HAL also advances the plant at every read and write)


@contextlib.asynccontextmanager
async def booted(
    mosquitto: Mosquitto,
    workdir: Path,
    clock: SimClock,
    start: float,
    specs: list[tuple[str, int, dict[str, Any]]],
) -> AsyncIterator[list[VirtualDevice]]:
    """Virtual devices (model, seed, VirtualDevice options) on one clock,
    their plants integrated from `start`, booted and connected."""
    devices: list[VirtualDevice] = []
    for model, seed, options in specs:
        dev_id, password = unique_id(model[:2]), secrets.token_urlsafe(12)
        mosquitto.add_user(dev_id, password)
        dev = VirtualDevice(dev_id, model, mosquitto.url, workdir, clock, seed, password=password, **options)
        dev.plant.advance(start)
        devices.append(dev)
    tasks = [asyncio.create_task(d.run(), name=f"sim-{d.id}") for d in devices]
    try:
        for d in devices:
            await async_wait_for(functools.partial(_up, d), 10, what=f"{d.id} up")
        yield devices
    finally:
        for d in devices:
            d.stop()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, 10)


def _up(dev: VirtualDevice) -> bool:
    return dev.device is not None and dev.device.client.up


async def follow(
    clock: SimClock, devices: list[VirtualDevice], until: float, watch: Callable[[float], None]
) -> None:
    """Step the devices' physics until simulated time `until`, calling
    watch(now) after every step."""
    last = clock.now()
    while last < until:
        await asyncio.sleep(STEP_S)
        now = clock.now()
        for d in devices:
            d.step(now, now - last)
        watch(now)
        last = now


# ---- the shirt --------------------------------------------------------------------

SHIRT_SEED = 1  # a wearer whose shirt, kept closed, gets to ~88 %RH on a run
SHIRT_SPEED = 150.0
SHIRT_SAMPLE_S = 0.1  # the vent reads humidity every 15 s of simulated time


async def test_the_vent_keeps_skin_humidity_below_its_threshold_where_a_closed_shirt_does_not(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    period = Skin.random(random.Random(SHIRT_SEED)).exertion.period_s
    start = math.ceil(MONDAY / period) * period  # a session begins: rest, warm-up, run, cool-down
    clock = SimClock(SHIRT_SPEED, start)
    options: dict[str, Any] = {"sample_s": SHIRT_SAMPLE_S, "telemetry_s": 1}
    specs = [("shirt", SHIRT_SEED, options), ("shirt", SHIRT_SEED, {**options, "features": []})]
    async with booted(mosquitto, tmp_path, clock, start, specs) as (vented, closed):
        assert vented.running() == ["vent"] and closed.running() == []
        assert isinstance(vented.plant, Skin) and isinstance(closed.plant, Skin)
        assert vented.plant.exertion == closed.plant.exertion and vented.plant.fabric == closed.plant.fabric
        assert vented.device is not None
        cfg = vented.device.features.config("vent")
        seen: dict[str, list[dict[str, Any]]] = {"vented": [], "closed": []}

        def watch(now: float) -> None:
            seen["vented"].append(vented.plant.truth())
            seen["closed"].append(closed.plant.truth())

        # through warm-up and the run, into the cool-down
        await follow(clock, [vented, closed], start + 0.8 * period, watch)

    with_vent = max(s["humidity"] for s in seen["vented"])
    without = max(s["humidity"] for s in seen["closed"])
    print(
        f"\nshirt {SHIRT_SEED}: max skin humidity {with_vent:.1f} %RH with the vent, "
        f"{without:.1f} %RH closed; open_at {cfg['open_at']}, full_at {cfg['full_at']}; "
        f"{len(seen['vented'])} samples"
    )
    assert len(seen["vented"]) > 500  # sampled throughout
    # the vent opens at open_at and further as humidity rises: humidity never
    # gets near full_at, and barely past open_at (sweat adds < 0.1 %RH/s: a
    # 15 s sample adds < 1.5 %RH; as much again for the event loop's jitter)
    assert with_vent < cfg["full_at"]
    assert with_vent < cfg["open_at"] + 3
    assert without > cfg["full_at"]
    assert max(s["vent"] for s in seen["vented"]) >= cfg["min_opening"]
    assert all(s["vent"] == 0 for s in seen["closed"])
    # relief: the twins alike until the vent first opens (up to how their
    # steps fell), far apart by the end of the run, and the skin cooler for it
    opened = next(i for i, s in enumerate(seen["vented"]) if s["vent"] > 0)
    assert math.isclose(
        seen["vented"][opened - 1]["humidity"], seen["closed"][opened - 1]["humidity"], abs_tol=0.05
    )
    end_vented, end_closed = seen["vented"][-1], seen["closed"][-1]
    assert end_vented["humidity"] < end_closed["humidity"] - 15
    assert end_vented["temperature"] < end_closed["temperature"]


# ---- the thermostat ----------------------------------------------------------------

ROOM_SEED = 0  # a room that warms to its setpoint in about half an hour
ROOM_SPEED = 1500.0
ROOM_SAMPLE_S = 0.02  # the thermostat reads the temperature every 30 s of simulated time
ROOM_START = MONDAY + 14 * 3600  # Monday afternoon into the night: the household comes home
ROOM_HOURS = 7.0


async def test_the_thermostat_holds_the_room_in_its_hysteresis_band_against_the_weather(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    clock = SimClock(ROOM_SPEED, ROOM_START)
    options: dict[str, Any] = {"sample_s": ROOM_SAMPLE_S, "telemetry_s": 1}
    async with booted(mosquitto, tmp_path, clock, ROOM_START, [("thermostat", ROOM_SEED, options)]) as (dev,):
        assert dev.running() == ["thermostat"] and dev.device is not None
        room = dev.plant
        assert isinstance(room, Room)
        cfg = dev.device.features.config("thermostat")
        sp, h = cfg["setpoint"], cfg["hysteresis"]
        seen: list[dict[str, Any]] = []
        await follow(clock, [dev], ROOM_START + ROOM_HOURS * 3600, lambda now: seen.append(room.truth()))

    warm = next(i for i, s in enumerate(seen) if s["temp"] >= sp - h)
    held = seen[warm:]
    lo, hi = min(s["temp"] for s in held), max(s["temp"] for s in held)
    outside_min = min(s["outside"] for s in seen)
    sample_sim_s = ROOM_SPEED * ROOM_SAMPLE_S
    # What the hysteresis alone cannot catch, from the room's own parameters:
    # above, the heat still in the radiator when the relay opens (at most
    # heater_w * lag) plus a sample's worth of heating; below, what the room
    # loses (doors open, coldest outside) while the radiator warms up after
    # the relay closes, plus a sample's worth of cooling.
    worst_loss_w = (room.loss + room.door_loss) * (sp - outside_min)
    above = (room.heater_w * room.heater_lag_s + room.heater_w * sample_sim_s) / room.capacity
    below = worst_loss_w * (room.heater_lag_s + sample_sim_s) / room.capacity
    switches = sum(a["relay"] != b["relay"] for a, b in itertools.pairwise(held))
    print(
        f"\nroom {ROOM_SEED}: warm after {(held[0]['t'] - ROOM_START) / 60:.0f} min, "
        f"then {lo:.2f}..{hi:.2f} C for {(held[-1]['t'] - held[0]['t']) / 3600:.1f} h "
        f"(band {sp - h:.2f}..{sp + h:.2f}, margins "
        f"-{below:.2f}/+{above:.2f}); outside {outside_min:.1f}..{max(s['outside'] for s in seen):.1f} C; "
        f"{switches} switches; {room.energy_kwh:.2f} kWh, {room.cost:.0f} ct"
    )
    assert held[-1]["t"] - held[0]["t"] > 5 * 3600  # several hours held
    assert above < 0.4 and below < 0.4  # the margins stay small next to the band
    assert sp - h - below <= lo and hi <= sp + h + above
    assert switches >= 6  # it cycled, as a thermostat does
    # the world moved under it: the household came home, the evening cooled
    assert any(not s["occupied"] for s in held) and held[-1]["occupied"]
    assert held[-1]["outside"] < held[0]["outside"]
    assert room.energy_kwh > 0 and room.cost > 0
