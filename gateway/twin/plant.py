"""The fitted plants: a device's room or shirt as its twin models them
(room.py and skin.py fit them), with the interface the simulator's HAL
drives (simulator/hal.Plant: advance(t), sensors(t), and `relay` or `vent`
set by the actuators).

Pure Python, no numpy: they run in the sandbox (runner.py), which keeps
its memory small. The fit evaluates the same conditions (weather,
occupancy, exertion) through the functions here, so the model fitted is
the model run.

Units: time in seconds (Unix time, UTC), temperatures in C, humidity in
%RH. A room's parameters are per unit of its heat capacity, which
temperatures alone cannot tell: `a` = UA/C (1/s, the loss), `g` = P/C (K/s,
the heater's full warming), occupancy gains in K/s.
"""

from __future__ import annotations

import math
from typing import Any

# the simulator's sub-stepping and time keeping (advance, step), for a fitted plant too
from simulator.physics import _Plant

DAY_S = 86400.0
HOUR_S = 3600.0
OMEGA = 2 * math.pi / DAY_S


def knot(t: float) -> tuple[int, float]:
    """(k, w): the weather's day level at t is (1 - w) * level[k] + w *
    level[k + 1], levels being set at each day's noon (UTC) and blended
    smoothly (a half cosine) from one noon to the next."""
    x = (t - DAY_S / 2) / DAY_S
    k = math.floor(x)
    return k, (1 - math.cos(math.pi * (x - k))) / 2


def local_hour(t: float, utc_offset_min: int) -> int:
    """The device's local hour of the day at t."""
    return int(((t + 60 * utc_offset_min) % DAY_S) // HOUR_S)


def weekend(t: float, utc_offset_min: int) -> bool:
    """Whether t falls on a Saturday or Sunday, local time (day 0, 1970-01-01, was a Thursday)."""
    day = math.floor((t + 60 * utc_offset_min) / DAY_S)
    return (day + 3) % 7 >= 5


class Weather:
    """The outdoor temperature: a sensor's readings where the device has
    one (`measured`: values every `step` s from `t0`, linear in between),
    else the fitted estimate: a day level per noon plus a daily swing
    (cos, sin of the time of day)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.kind = spec["kind"]
        if self.kind == "measured":
            self.t0 = float(spec["t0"])
            self.step = float(spec["step"])
            self.values = [float(v) for v in spec["values"]]
        else:
            self.first = int(spec["first_day"])
            self.levels = [float(v) for v in spec["levels"]]
            self.cos = float(spec["cos"])
            self.sin = float(spec["sin"])

    def level(self, k: int) -> float:
        return self.levels[min(max(k - self.first, 0), len(self.levels) - 1)]

    def at(self, t: float) -> float:
        if self.kind == "measured":
            x = (t - self.t0) / self.step
            i = min(max(math.floor(x), 0), len(self.values) - 1)
            j = min(i + 1, len(self.values) - 1)
            f = min(max(x - i, 0.0), 1.0)
            return self.values[i] * (1 - f) + self.values[j] * f
        k, w = knot(t)
        return (
            (1 - w) * self.level(k)
            + w * self.level(k + 1)
            + self.cos * math.cos(OMEGA * t)
            + (self.sin * math.sin(OMEGA * t))
        )


class Profile:
    """A quantity by local hour of the day, work days and weekends apart."""

    def __init__(self, spec: dict[str, Any], utc_offset_min: int) -> None:
        self.weekday = [float(v) for v in spec["weekday"]]
        self.weekend = [float(v) for v in spec["weekend"]]
        self.offset = utc_offset_min

    def at(self, t: float) -> float:
        hours = self.weekend if weekend(t, self.offset) else self.weekday
        return hours[local_hour(t, self.offset)]


class FittedRoom(_Plant):
    """A heated room as fitted (room.py): dT/dt = g q - a (T - T_out(t)) +
    occ(t), where q (0..1) follows the relay through a first-order lag of
    lag_s seconds (the radiator warming up and cooling down). `on_s`
    counts the seconds the relay has been on, the energy drawn."""

    def __init__(self, spec: dict[str, Any], temp: float, utc_offset_min: int = 0) -> None:
        self.a = float(spec["a"])
        self.g = float(spec["g"])
        self.lag_s = float(spec["lag_s"])
        self.weather = Weather(spec["outdoor"])
        self.occupancy = Profile(spec["occupancy"], utc_offset_min)
        self.humidity = float(spec.get("humidity", 45.0))
        self.temp = float(temp)
        self.q = float(spec.get("q0", 0.0))
        self.relay = False
        self.vent = 0.0
        self.on_s = 0.0
        self.t: float | None = None

    def _integrate(self, a: float, h: float) -> None:
        mid = a + h / 2
        r = 1.0 if self.relay else 0.0
        decay = math.exp(-h / self.lag_s)
        # the heat given over the step, exactly, then the room
        q_mean = r + (self.q - r) * self.lag_s * (1 - decay) / h
        self.q = r + (self.q - r) * decay
        drive = self.g * q_mean + self.occupancy.at(mid) - self.a * (self.temp - self.weather.at(mid))
        self.temp += drive * h
        if self.relay:
            self.on_s += h

    def sensors(self, t: float) -> dict[str, float]:
        # (the outdoor probe reads where the device has one plugged in: HAL add-ons)
        outdoor = self.weather.at(t)
        return {"temperature": self.temp, "humidity": self.humidity, "outdoor_temperature": outdoor}


class FittedSkin(_Plant):
    """The microclimate under a shirt as fitted (skin.py): dH/dt = u(t) -
    (fabric + vent_flow x) (H - ambient), x the vent's opening (0..1), u
    the sweat by phase of the wearer's session (a period of period_s). The
    skin's temperature and the battery read as recorded (the vent does not
    read them)."""

    def __init__(self, spec: dict[str, Any], humidity: float) -> None:
        self.fabric = float(spec["fabric"])
        self.vent_flow = float(spec["vent_flow"])
        self.ambient = float(spec["ambient"])
        self.period = float(spec["period_s"])
        self.sweat = [float(v) for v in spec["sweat"]]
        self.skin_temperature = float(spec.get("skin_temperature", 33.0))
        self.battery = float(spec.get("battery", 80.0))
        self.humidity = float(humidity)
        self.vent = 0.0
        self.relay = False
        self.t: float | None = None

    def exertion(self, t: float) -> float:
        """The sweat coming in at t, %RH/s."""
        n = len(self.sweat)
        return self.sweat[min(int((t % self.period) / self.period * n), n - 1)]

    def _integrate(self, a: float, h: float) -> None:
        k = self.fabric + self.vent_flow * self.vent / 100.0
        drive = self.exertion(a + h / 2) - k * (self.humidity - self.ambient)
        self.humidity = min(100.0, max(0.0, self.humidity + drive * h))

    def sensors(self, t: float) -> dict[str, float]:
        return {"humidity": self.humidity, "skin_temperature": self.skin_temperature, "battery": self.battery}


def make_plant(spec: dict[str, Any], initial: dict[str, float], utc_offset_min: int) -> Any:
    """The plant a fit's spec describes, in its initial state."""
    kind = spec["kind"]
    if kind == "room":
        return FittedRoom(spec, initial["temperature"], utc_offset_min)
    if kind == "skin":
        return FittedSkin(spec, initial["humidity"])
    raise ValueError(f"no fitted plant of kind {kind!r}")
