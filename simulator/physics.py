"""Physics of the products, as plain state machines stepped with dt (seconds
of simulated time). Parameters vary per device within seeded ranges; the
world around a device (weather, occupancy, energy prices, a wearer's
exertion) is a pure function of time and the plant's seed, so a plant built
from the same seed lives the same day. Time of day is UTC, which is the
devices' local time in the simulator (their utc_offset_min is 0).

Every plant keeps `t`, the simulated time it has been integrated up to:
step(t, dt) integrates [t - dt, t] in sub-steps of at most _MAX_STEP_S,
skipping any part already integrated, and advance(t) brings the plant up to
t. The HAL advances a plant before it reads a sensor or moves an actuator,
so an actuator takes effect at the moment it moves, however coarse the
physics loop's steps are."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from random import Random
from typing import Any

_MAX_STEP_S = 5.0  # longest internal step: well inside every plant's fastest time constant
_DAY_S = 86400.0
_HOUR_S = 3600.0
_CACHE_DAYS = 8  # per-day tables a plant keeps (weather, occupancy, prices)
PERSON_W = 100.0  # heat a person at rest gives off

# A day's tariff shape, ct/kWh by local hour: cheap nights, a morning and an
# evening peak, a dip at midday.
_TARIFF = (
    *(9.1, 8.4, 7.9, 7.6, 7.8, 8.9, 14.2, 27.5, 31.0, 26.3, 21.8, 18.9),
    *(16.4, 15.9, 17.2, 20.5, 26.8, 34.9, 38.2, 36.1, 29.4, 22.7, 17.3, 12.5),
)


def daily(t: float, mean: float, amplitude: float, peak_hour: float = 15.0) -> float:
    """A daily sinusoid peaking at peak_hour (UTC)."""
    hours = (t / 3600.0) % 24
    return mean + amplitude * math.cos(2 * math.pi * (hours - peak_hour) / 24)


def _day_of(t: float) -> int:
    return math.floor(t / _DAY_S)


def _weekday(day: int) -> int:
    """0 = Monday ... 6 = Sunday (day 0, 1970-01-01, was a Thursday)."""
    return (day + 3) % 7


class _Plant:
    """Sub-stepping and time keeping, shared by the plants."""

    t: float | None

    def step(self, t: float, dt: float) -> None:
        """Integrate over [t - dt, t], in sub-steps of at most _MAX_STEP_S,
        skipping what was already integrated (the plant's `t`)."""
        start = t - dt
        if self.t is not None and self.t > start:
            start = self.t
        span = t - start
        if not 0 < span < math.inf:  # also refuses NaN
            return
        n = math.ceil(span / _MAX_STEP_S)
        h = span / n
        for i in range(n):
            self._integrate(start + i * h, h)
        self.t = t

    def advance(self, t: float) -> None:
        """Bring the plant up to time t; the first call only sets the start."""
        if self.t is None:
            self.t = t
        else:
            self.step(t, t - self.t)

    def _integrate(self, a: float, h: float) -> None:
        raise NotImplementedError

    def sensors(self, t: float) -> dict[str, float]:
        raise NotImplementedError

    def truth(self) -> dict[str, Any]:
        raise NotImplementedError


def _cached(cache: dict[tuple[str, int], Any], key: tuple[str, int]) -> Any:
    if len(cache) > 3 * _CACHE_DAYS:
        cache.clear()
    return cache.get(key)


CO2_OUTDOOR_PPM = 420.0  # the air outside
CO2_PERSON_PPM = 250.0  # what one person at home adds to a ventilated room's steady level


@dataclass
class Room(_Plant):
    """A heated room: thermal mass `capacity` (J/K), loss `loss` (W/K) to the
    outside, an electric heater of `heater_w` (W) whose heat reaches the room
    through a first-order lag (the radiator warming up and cooling down: the
    energy drawn is stored and given off later, none is lost), the weather
    (a daily swing around a mean, plus a seeded day-to-day variation),
    occupants (100 W each while home, and doors opened as they come and go)
    and an hourly energy price (ct/kWh). Energy drawn and its cost are
    accounted as the room is stepped."""

    temp: float = 18.0
    capacity: float = 2.0e6
    loss: float = 100.0
    heater_w: float = 3000.0
    heater_lag_s: float = 120.0
    outside_mean: float = 5.0
    outside_swing: float = 4.0
    outside_spread: float = 3.0  # K, standard deviation of a day's departure from the mean
    people: int = 2
    leave_h: float = 7.5  # work days: leave about then (local hour) ...
    return_h: float = 17.5  # ... and come back about then
    door_loss: float = 100.0  # W/K extra while the door stands open
    door_s: float = 90.0  # how long it stands open as people come or go
    seed: int = 0
    relay: bool = False
    heat_out: float = 0.0  # heat the heater gives the room now, W
    energy_kwh: float = 0.0  # electricity drawn so far
    cost: float = 0.0  # what it cost, ct
    t: float | None = None
    _cache: dict[tuple[str, int], Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def random(cls, rng: Random) -> Room:
        loss = rng.uniform(60.0, 130.0)
        return cls(
            temp=rng.uniform(15.0, 20.0),
            capacity=rng.uniform(1.5e6, 3.0e6),
            loss=loss,
            # sized, as an installer would, to hold 21 C on a day of -7 to -19 C
            heater_w=loss * rng.uniform(28.0, 40.0),
            heater_lag_s=rng.uniform(60.0, 240.0),
            outside_mean=rng.uniform(-2.0, 10.0),
            outside_swing=rng.uniform(2.0, 6.0),
            outside_spread=rng.uniform(1.5, 4.0),
            people=rng.randint(1, 4),
            leave_h=rng.uniform(6.5, 8.5),
            return_h=rng.uniform(16.0, 19.0),
            door_loss=rng.uniform(60.0, 150.0),
            door_s=rng.uniform(60.0, 120.0),
            seed=rng.getrandbits(32),
        )

    # ---- the world: pure functions of time and the seed ------------------------

    def _rng(self, kind: str, day: int) -> Random:
        return Random(f"{self.seed}:{kind}:{day}")

    def _anomaly(self, day: int) -> float:
        """How much warmer than the mean this day is (K), seeded."""
        key = ("weather", day)
        value = _cached(self._cache, key)
        if value is None:
            value = self._cache[key] = self._rng("weather", day).gauss(0.0, self.outside_spread)
        return float(value)

    def outside(self, t: float) -> float:
        """Outside temperature (C): the daily swing, peaking at 15:00, plus a
        departure from the mean that changes smoothly from one day's noon to
        the next."""
        x = (t - _DAY_S / 2) / _DAY_S
        day = math.floor(x)
        w = (1 - math.cos(math.pi * (x - day))) / 2
        anomaly = (1 - w) * self._anomaly(day) + w * self._anomaly(day + 1)
        return daily(t, self.outside_mean + anomaly, self.outside_swing)

    def _away(self, day: int) -> tuple[tuple[float, float], ...]:
        """The day's absences, (leave, back) in seconds of the day, seeded:
        work days out from morning to evening (now and then a day at home),
        weekends now and then an outing."""
        key = ("away", day)
        plan = _cached(self._cache, key)
        if plan is None:
            rng = self._rng("occupancy", day)
            if _weekday(day) < 5:
                leave = self.leave_h * _HOUR_S + rng.uniform(-1800.0, 1800.0)
                back = self.return_h * _HOUR_S + rng.uniform(-3600.0, 3600.0)
                plan = () if rng.random() < 0.1 else ((leave, back),)
            else:
                start = rng.uniform(10.0, 15.0) * _HOUR_S
                plan = ((start, start + rng.uniform(1.5, 4.0) * _HOUR_S),) if rng.random() < 0.6 else ()
            self._cache[key] = plan
        return tuple(plan)

    def _home(self, t: float) -> tuple[bool, bool]:
        """(anyone home, door open) at t: the door stands open for door_s
        at each coming and going."""
        day = _day_of(t)
        s = t - day * _DAY_S
        plan = self._away(day)
        home = not any(leave <= s < back for leave, back in plan)
        door = any(0 <= s - moment < self.door_s for interval in plan for moment in interval)
        return home, door

    def occupied(self, t: float) -> bool:
        """Whether anyone is home at t."""
        return self._home(t)[0]

    def door_open(self, t: float) -> bool:
        """Whether the door stands open at t."""
        return self._home(t)[1]

    def day_prices(self, t: float) -> list[float]:
        """The 24 hourly prices (ct/kWh) of the day holding t: the tariff's
        shape, scaled by a seeded factor for the day (wind, demand), with a
        little seeded variation per hour."""
        day = _day_of(t)
        key = ("price", day)
        table = _cached(self._cache, key)
        if table is None:
            rng = self._rng("price", day)
            factor = rng.uniform(0.8, 1.3)
            table = self._cache[key] = [round(p * factor * rng.uniform(0.92, 1.08), 2) for p in _TARIFF]
        return list(table)

    def price(self, t: float) -> float:
        """The price (ct/kWh) in force at t."""
        return self.day_prices(t)[int((t - _day_of(t) * _DAY_S) // _HOUR_S)]

    def _price_integral(self, a: float, b: float) -> float:
        """The integral of the price over [a, b], in ct/kWh * s."""
        total = 0.0
        while a < b:
            end = min(b, (math.floor(a / _HOUR_S) + 1) * _HOUR_S)
            total += self.price(a) * (end - a)
            a = end
        return total

    # ---- the plant ---------------------------------------------------------------

    def _integrate(self, a: float, h: float) -> None:
        mid = a + h / 2
        power = self.heater_w if self.relay else 0.0
        self.heat_out += (power - self.heat_out) * -math.expm1(-h / self.heater_lag_s)
        home, door = self._home(mid)
        gain = self.heat_out + (PERSON_W * self.people if home else 0.0)
        ua = self.loss + (self.door_loss if door else 0.0)
        self.temp += (gain - ua * (self.temp - self.outside(mid))) * h / self.capacity
        if power:
            self.energy_kwh += power * h / 3.6e6
            self.cost += power / 3.6e6 * self._price_integral(a, a + h)

    def sensors(self, t: float) -> dict[str, float]:
        # (the outdoor probe and the CO2 sensor read where they are plugged in: HAL add-ons)
        co2 = CO2_OUTDOOR_PPM + (CO2_PERSON_PPM * self.people if self.occupied(t) else 0.0)
        outdoor = self.outside(t)
        return {"temperature": self.temp, "humidity": 45.0, "outdoor_temperature": outdoor, "co2": co2}

    def truth(self) -> dict[str, Any]:
        """The room as it is now (at `t`): what a test compares the thermostat with."""
        t = self.t if self.t is not None else 0.0
        return {
            "t": t,
            "temp": self.temp,
            "outside": self.outside(t),
            "heat_out_w": self.heat_out,
            "power_w": self.heater_w if self.relay else 0.0,
            "relay": self.relay,
            "occupied": self.occupied(t),
            "people_home": self.people if self.occupied(t) else 0,
            "door_open": self.door_open(t),
            "price": self.price(t),
            "energy_kwh": self.energy_kwh,
            "cost": self.cost,
        }


@dataclass
class Exertion:
    """A wearer's exertion 0..1 over a session: rest, warm-up, run, cool-down,
    repeated with a period of `period_s` (sessions start at multiples of it)."""

    period_s: float = 3600.0
    peak: float = 0.9
    phases: tuple[tuple[float, float], ...] = ((0.15, 0.1), (0.1, 0.5), (0.5, 1.0), (0.25, 0.2))

    def at(self, t: float) -> float:
        x = (t % self.period_s) / self.period_s
        for length, level in self.phases:
            if x < length:
                return level * self.peak
            x -= length
        return self.phases[-1][1] * self.peak


@dataclass
class Battery:
    """A wearable's cell, its charge in % of capacity_mah. The board draws
    idle_ma all the time; the vent's servo servo_ma while it moves (a full
    sweep, 0 to 100 %, takes sweep_s); the radio radio_mas per message it
    sends or receives (an update's chunks and requests are most of them).
    On its charger, which also runs the board, it gains charge_ma, tapering
    over the last 20 % as a Li-ion charger does. The charge stays within 0-100; the simulator does
    not cut a device's power at 0 (a power cut is a fault of its own)."""

    charge: float = 80.0
    capacity_mah: float = 500.0
    idle_ma: float = 25.0
    servo_ma: float = 350.0
    sweep_s: float = 0.6
    radio_mas: float = 2.0  # mA s per message: ~100 mA for the 20 ms a 2 KB chunk takes
    charge_ma: float = 250.0
    charger: bool = False

    def _add(self, mas: float) -> None:
        """Add (or, negative, draw) mas milliampere-seconds."""
        self.charge = min(100.0, max(0.0, self.charge + mas / 36.0 / self.capacity_mah))

    def run(self, h: float) -> None:
        """h seconds of the board running, and of charging if on the charger."""
        if self.charger:  # which also runs the board
            self._add(self.charge_ma * min(1.0, (100.0 - self.charge) / 20.0) * h)
        else:
            self._add(-self.idle_ma * h)

    def servo(self, travel: float) -> None:
        """The servo moved by travel % of its range."""
        self._add(-self.servo_ma * self.sweep_s * abs(travel) / 100.0)

    def radio(self, messages: int) -> None:
        """The radio carried this many messages."""
        self._add(-self.radio_mas * messages)


@dataclass
class Skin(_Plant):
    """The microclimate under the shirt. Humidity (%RH): sweat comes in in
    proportion to exertion; vapour leaves with the air exchanged through
    the fabric and, much faster, through the open vent. Skin temperature
    (C): drawn towards rest + rise * exertion (the body's heat), lowered by
    the latent heat of the vapour carried off and by the air the vent lets
    in (cooler than the skin). The shirt's board runs on `battery`, which
    the servo drains as the vent moves."""

    humidity: float = 45.0
    temperature: float = 33.0
    ambient: float = 40.0  # %RH of the air around the wearer
    air_temp: float = 18.0  # C of the air around the wearer
    sweat_rate: float = 0.065  # %RH per second at full exertion
    fabric: float = 0.0012  # 1/s air exchange through the closed shirt
    vent_flow: float = 0.008  # 1/s extra exchange with the vent fully open
    rest_temp: float = 33.0  # skin temperature at rest, C
    rise: float = 3.0  # K more at full exertion
    skin_tau_s: float = 400.0  # how fast the skin follows the body's heat
    latent: float = 0.01  # K of cooling per %RH of vapour carried off
    convection: float = 0.015  # share of the air exchange that cools the skin
    vent: float = 0.0  # flap opening, percent
    exertion: Exertion = field(default_factory=Exertion)
    battery: Battery = field(default_factory=Battery)
    t: float | None = None
    _vent_was: float = field(default=0.0, init=False, repr=False, compare=False)

    @classmethod
    def random(cls, rng: Random) -> Skin:
        return cls(
            humidity=rng.uniform(40.0, 50.0),
            ambient=rng.uniform(30.0, 55.0),
            air_temp=rng.uniform(8.0, 25.0),
            sweat_rate=rng.uniform(0.05, 0.08),
            fabric=rng.uniform(0.0008, 0.0015),
            vent_flow=rng.uniform(0.006, 0.010),
            rest_temp=rng.uniform(32.0, 34.0),
            rise=rng.uniform(2.0, 4.0),
            skin_tau_s=rng.uniform(300.0, 600.0),
            exertion=Exertion(period_s=rng.uniform(2400.0, 4800.0), peak=rng.uniform(0.7, 1.0)),
            battery=Battery(charge=rng.uniform(60.0, 95.0), capacity_mah=rng.uniform(400.0, 600.0)),
        )

    def exchange(self) -> float:
        """Air exchanged under the shirt now, 1/s."""
        return self.fabric + self.vent_flow * self.vent / 100.0

    def _integrate(self, a: float, h: float) -> None:
        if self.vent != self._vent_was:  # the HAL moved it since the last step
            self.battery.servo(self.vent - self._vent_was)
            self._vent_was = self.vent
        self.battery.run(h)
        e = self.exertion.at(a + h / 2)
        k = self.exchange()
        out = k * (self.humidity - self.ambient)  # vapour carried off, %RH/s
        heat = (self.rest_temp + self.rise * e - self.temperature) / self.skin_tau_s
        cool = self.latent * max(0.0, out) + self.convection * k * (self.temperature - self.air_temp)
        self.humidity = min(100.0, max(0.0, self.humidity + (self.sweat_rate * e - out) * h))
        self.temperature = min(42.0, max(15.0, self.temperature + (heat - cool) * h))

    def sensors(self, t: float) -> dict[str, float]:
        return {
            "humidity": self.humidity,
            "skin_temperature": self.temperature,
            "battery": self.battery.charge,
        }

    def truth(self) -> dict[str, Any]:
        """The shirt as it is now (at `t`)."""
        t = self.t if self.t is not None else 0.0
        return {
            "t": t,
            "humidity": self.humidity,
            "temperature": self.temperature,
            "exertion": self.exertion.at(t),
            "vent": self.vent,
            "exchange": self.exchange(),
            "battery": self.battery.charge,
            "charger": self.battery.charger,
        }
