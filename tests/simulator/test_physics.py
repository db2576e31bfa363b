"""The products' physics on its own (simulator/physics.py): seeded and
deterministic, varied across a fleet, stable at coarse steps, accounting
energy and cost exactly, and physically plausible in its extremes."""

from __future__ import annotations

import calendar
import itertools
import math
import random
import statistics
from dataclasses import fields

from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.physics import PERSON_W, Room, Skin

# Monday 2024-01-15, 00:00 UTC: days of the week are known from here
MONDAY = float(calendar.timegm((2024, 1, 15, 0, 0, 0)))
DAY = 86400.0
HOUR = 3600.0


def run(plant: Room | Skin, start: float, span: float, dt: float) -> None:
    plant.advance(start)
    t = start
    while t < start + span:
        t += dt
        plant.step(t, dt)


def params(plant: Room | Skin) -> dict[str, object]:
    return {f.name: getattr(plant, f.name) for f in fields(plant) if not f.name.startswith("_")}


# ---- seeds ---------------------------------------------------------------------------


def test_a_seed_gives_the_same_plant_and_the_same_day() -> None:
    for cls in (Room, Skin):
        a, b = cls.random(random.Random(7)), cls.random(random.Random(7))
        assert params(a) == params(b)
        assert params(a) != params(cls.random(random.Random(8)))
        run(a, MONDAY, DAY, 60)
        run(b, MONDAY, DAY, 60)
        assert a.truth() == b.truth()
    room = Room.random(random.Random(7))
    assert [room.price(MONDAY + h * HOUR) for h in range(48)] == [
        Room.random(random.Random(7)).price(MONDAY + h * HOUR) for h in range(48)
    ]


def test_a_seeded_fleet_is_not_n_copies() -> None:
    rng = random.Random(2024)
    rooms = [Room.random(rng) for _ in range(60)]
    for name in ("capacity", "loss", "heater_w", "heater_lag_s", "outside_mean", "leave_h", "return_h"):
        values = [getattr(r, name) for r in rooms]
        assert len(set(values)) == len(values), name
        assert statistics.pstdev(values) > 0.15 * (max(values) - min(values)) > 0, name
    assert {r.people for r in rooms} == {1, 2, 3, 4}
    # the world differs from one room to the next: prices, weather, who is home
    noon = MONDAY + 12 * HOUR
    assert len({r.price(noon) for r in rooms}) > 30
    assert len({round(r.outside(noon), 3) for r in rooms}) == len(rooms)
    leaving = [next((t for t in range(0, 86400, 60) if not r.occupied(MONDAY + t)), None) for r in rooms[:20]]
    assert len(set(leaving)) > 10
    shirts = [Skin.random(rng) for _ in range(60)]
    for name in ("ambient", "sweat_rate", "fabric", "vent_flow", "rest_temp", "rise"):
        values = [getattr(s, name) for s in shirts]
        assert len(set(values)) == len(values), name
    assert len({s.exertion.period_s for s in shirts}) == len(shirts)


# ---- the room's world ------------------------------------------------------------


def test_the_price_is_hourly_cheap_at_night_and_dear_at_the_peaks() -> None:
    room = Room.random(random.Random(3))
    days = [room.day_prices(MONDAY + d * DAY) for d in range(14)]
    assert len({tuple(d) for d in days}) == 14  # each day its own
    for prices in days:
        assert len(prices) == 24 and all(p > 0 for p in prices)
        assert max(prices[0:6]) < min(prices[7:9]) and max(prices[0:6]) < min(prices[17:20])
    # constant within the hour, and what day_prices says
    t = MONDAY + 3 * DAY + 8 * HOUR
    assert {room.price(t + s) for s in range(0, 3600, 300)} == {days[3][8]}
    assert room.truth()["price"] == room.price(0.0)


def test_the_weather_swings_daily_varies_from_day_to_day_and_never_jumps() -> None:
    room = Room(outside_mean=4.0, outside_swing=5.0, outside_spread=3.0, seed=11)
    means = [
        statistics.fmean(room.outside(MONDAY + d * DAY + h * HOUR) for h in range(24)) for d in range(20)
    ]
    assert statistics.pstdev(means) > 1.0
    assert abs(statistics.fmean(means) - 4.0) < 3.0
    for d in range(20):
        day = MONDAY + d * DAY
        assert room.outside(day + 15 * HOUR) > room.outside(day + 4 * HOUR)
    samples = [room.outside(MONDAY + s) for s in range(0, int(3 * DAY), 60)]
    assert max(abs(b - a) for a, b in itertools.pairwise(samples)) < 0.05


def test_people_are_out_on_work_days_and_home_at_night() -> None:
    rooms = [Room.random(random.Random(seed)) for seed in range(40)]
    for day in range(14):
        base = MONDAY + day * DAY
        assert all(r.occupied(base + 3 * HOUR) and r.occupied(base + 23 * HOUR) for r in rooms)
        out_at_noon = sum(not r.occupied(base + 12 * HOUR) for r in rooms)
        if day % 7 < 5:
            assert out_at_noon >= 30, day  # now and then someone stays home
        else:
            assert out_at_noon < 35, day  # weekends: now and then an outing
    room = rooms[0]
    # the door stands open for door_s at each coming and going
    leave = next(s for s in range(0, 86400) if not room.occupied(MONDAY + s))
    assert room.door_open(MONDAY + leave) and room.door_open(MONDAY + leave + room.door_s - 1)
    assert not room.door_open(MONDAY + leave + room.door_s + 1)
    assert not room.door_open(MONDAY + 3 * HOUR)


# ---- the room's plant ------------------------------------------------------------


def still_world(**kw: float) -> Room:
    """A room with constant weather and nobody ever home."""
    return Room(outside_swing=0.0, outside_spread=0.0, people=0, door_loss=0.0, **kw)  # type: ignore[arg-type]


def test_an_unheated_room_drifts_to_the_outside_temperature() -> None:
    room = still_world(temp=20.0, outside_mean=3.0)
    tau = room.capacity / room.loss
    run(room, MONDAY, 12 * tau, 60)
    assert abs(room.temp - 3.0) < 0.01
    assert room.energy_kwh == 0 and room.cost == 0
    # with the weather moving, it follows it within the day's range
    room = Room.random(random.Random(5))
    room.people = 0
    run(room, MONDAY, 5 * DAY, 60)
    last_day = [room.outside(MONDAY + 4 * DAY + s) for s in range(0, 86400, 600)]
    assert min(last_day) - 0.5 < room.temp < max(last_day) + 0.5


def test_a_heater_always_on_settles_at_outside_plus_its_power_over_the_loss() -> None:
    room = still_world(temp=10.0, outside_mean=0.0, heater_w=3000.0, loss=100.0)
    room.relay = True
    run(room, MONDAY, 12 * room.capacity / room.loss, 60)
    assert abs(room.temp - 30.0) < 0.02
    assert abs(room.heat_out - 3000.0) < 1e-6


def test_people_at_home_warm_the_room_by_100_w_each() -> None:
    room = still_world(temp=5.0, outside_mean=5.0)
    room.people = 3
    sunday = MONDAY + 6 * DAY
    room._away = lambda day: ()  # type: ignore[method-assign]  # a household that never goes out
    run(room, sunday, 12 * room.capacity / room.loss, 60)
    assert abs(room.temp - (5.0 + 3 * PERSON_W / room.loss)) < 0.01


def test_the_heater_s_output_lags_the_relay() -> None:
    room = still_world(heater_w=2000.0, heater_lag_s=200.0)
    room.advance(MONDAY)
    room.relay = True
    room.step(MONDAY + 200, 200)
    assert abs(room.heat_out - 2000.0 * (1 - math.exp(-1))) < 1.0
    room.relay = False
    room.step(MONDAY + 400, 200)
    assert 0 < room.heat_out < 2000.0 * (1 - math.exp(-1)) * math.exp(-1) + 1.0


def test_energy_and_cost_are_the_integral_of_heater_power_times_price() -> None:
    room = Room.random(random.Random(9))
    start, span, dt = MONDAY + 5 * HOUR + 17, 30 * HOUR, 45.0
    switch = random.Random(1)
    relay_at: dict[int, bool] = {}  # whole seconds since start -> relay during the following second
    room.advance(start)
    t = 0
    while t < span:
        room.relay = switch.random() < 0.5
        for s in range(t, t + int(dt)):
            relay_at[s] = room.relay
        t += int(dt)
        room.step(start + t, dt)
    energy = sum(room.heater_w for s, on in relay_at.items() if on) / 3.6e6
    cost = sum(room.heater_w * room.price(start + s) for s, on in relay_at.items() if on) / 3.6e6
    assert math.isclose(room.energy_kwh, energy, rel_tol=1e-9)
    assert math.isclose(room.cost, cost, rel_tol=1e-9)
    assert room.truth()["energy_kwh"] == room.energy_kwh and room.truth()["cost"] == room.cost


def test_coarse_steps_agree_with_fine_ones() -> None:
    for cls in (Room, Skin):
        fine, coarse = cls.random(random.Random(4)), cls.random(random.Random(4))
        for plant in (fine, coarse):
            plant.advance(MONDAY)
        for k in range(1, 121):
            if isinstance(fine, Room) and isinstance(coarse, Room):
                fine.relay = coarse.relay = (k // 20) % 2 == 0
            else:
                assert isinstance(fine, Skin) and isinstance(coarse, Skin)
                fine.vent = coarse.vent = 100.0 if (k // 20) % 2 else 0.0
            end = MONDAY + 60 * k
            while fine.t is not None and fine.t < end:
                fine.step(fine.t + 1, 1)
            coarse.step(end, 60)
        for key, value in fine.truth().items():
            if isinstance(value, float):
                assert math.isclose(value, coarse.truth()[key], rel_tol=1e-3, abs_tol=1e-3), key


def test_an_actuator_moved_between_steps_takes_effect_when_it_moved() -> None:
    """As the HAL does: advance to the moment, then move the actuator; the
    physics loop's next step integrates only what is left."""
    a, b = Room.random(random.Random(2)), Room.random(random.Random(2))
    for room in (a, b):
        room.advance(MONDAY)
    a.advance(MONDAY + 37)
    a.relay = True
    a.step(MONDAY + 100, 100)  # the part already integrated is skipped
    b.step(MONDAY + 37, 37)
    b.relay = True
    b.step(MONDAY + 100, 63)
    assert a.truth() == b.truth()


# ---- the shirt ----------------------------------------------------------------------


def test_exertion_raises_skin_humidity_and_temperature_and_the_vent_brings_both_down() -> None:
    closed, vented = Skin.random(random.Random(1)), Skin.random(random.Random(1))
    period = closed.exertion.period_s
    start = math.ceil(MONDAY / period) * period  # a session begins
    for s in (closed, vented):
        run(s, start, 0.1 * period, 5)  # at rest
    rest = closed.truth()
    vented.vent = 100.0
    for s in (closed, vented):
        run(s, start + 0.1 * period, 0.65 * period, 5)  # warm-up and the run
    hot, relieved = closed.truth(), vented.truth()
    assert hot["exertion"] > rest["exertion"]
    assert hot["humidity"] > rest["humidity"] + 20 and hot["temperature"] > rest["temperature"] + 1.5
    assert relieved["humidity"] < hot["humidity"] - 20
    assert relieved["temperature"] < hot["temperature"] - 0.3
    assert relieved["vent"] == 100.0 and relieved["exchange"] > hot["exchange"]
    assert closed.sensors(0) == {
        "humidity": hot["humidity"],
        "skin_temperature": hot["temperature"],
        "battery": hot["battery"],
    }
    assert relieved["battery"] < hot["battery"]  # the servo moved


# ---- any plant in the seeded ranges, any step --------------------------------------

steps = st.lists(
    st.tuples(st.floats(0.001, 600.0), st.booleans(), st.integers(0, 100)), min_size=1, max_size=60
)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), start=st.floats(0, 2e9), plan=steps)
def test_a_room_stays_finite_and_in_its_sensor_s_range(
    seed: int, start: float, plan: list[tuple[float, bool, int]]
) -> None:
    room = Room.random(random.Random(seed))
    room.advance(start)
    t, energy = start, 0.0
    for dt, relay, _ in plan:
        room.relay = relay
        t += dt
        room.step(t, dt)
        truth = room.truth()
        assert all(not (isinstance(v, float) and math.isnan(v)) for v in truth.values()), truth
        assert -30 <= room.temp <= 70 and 0 <= room.heat_out <= room.heater_w
        assert room.energy_kwh >= energy and room.cost >= 0
        energy = room.energy_kwh


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), start=st.floats(0, 2e9), plan=steps)
def test_a_shirt_stays_finite_and_in_its_sensors_ranges(
    seed: int, start: float, plan: list[tuple[float, bool, int]]
) -> None:
    skin = Skin.random(random.Random(seed))
    skin.advance(start)
    t = start
    for dt, _, vent in plan:
        skin.vent = vent
        t += dt
        skin.step(t, dt)
        assert 0 <= skin.humidity <= 100 and 10 <= skin.temperature <= 45, skin.truth()
        lo, hi = min(skin.rest_temp, skin.air_temp), skin.rest_temp + skin.rise
        assert lo - 2 <= skin.temperature <= hi + 0.5, skin.truth()
