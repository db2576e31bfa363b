"""Physics of the products, as plain state machines stepped with dt (seconds
of simulated time). Parameters vary per device within seeded ranges."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field


def daily(t: float, mean: float, amplitude: float, peak_hour: float = 15.0) -> float:
    """A daily sinusoid peaking at peak_hour (UTC)."""
    hours = (t / 3600.0) % 24
    return mean + amplitude * math.cos(2 * math.pi * (hours - peak_hour) / 24)


@dataclass
class Room:
    """A heated room: thermal mass C (J/K), loss U (W/K) to the outside,
    a heater of power P (W) whose output follows the relay with a lag
    (radiator warm-up), an outside temperature following the weather."""

    temp: float = 18.0
    capacity: float = 1.0e6
    loss: float = 100.0
    heater_w: float = 2500.0
    heater_lag_s: float = 240.0
    outside_mean: float = 5.0
    outside_swing: float = 4.0
    relay: bool = False
    heat_out: float = 0.0  # current heater output, W

    @classmethod
    def random(cls, rng: random.Random) -> Room:
        loss = rng.uniform(70.0, 130.0)
        return cls(
            temp=rng.uniform(15.0, 20.0),
            capacity=rng.uniform(0.7e6, 1.5e6),
            loss=loss,
            # sized, as an installer would, to hold ~25 C on the coldest day
            heater_w=loss * rng.uniform(30.0, 45.0),
            heater_lag_s=rng.uniform(120.0, 400.0),
            outside_mean=rng.uniform(0.0, 10.0),
            outside_swing=rng.uniform(2.0, 6.0),
        )

    def outside(self, t: float) -> float:
        return daily(t, self.outside_mean, self.outside_swing)

    def step(self, t: float, dt: float) -> None:
        target = self.heater_w if self.relay else 0.0
        self.heat_out += (target - self.heat_out) * min(1.0, dt / self.heater_lag_s)
        flow = self.heat_out - self.loss * (self.temp - self.outside(t))
        self.temp += flow * dt / self.capacity

    def sensors(self, t: float) -> dict[str, float]:
        return {"temperature": self.temp, "humidity": 45.0}


@dataclass
class Exertion:
    """A wearer's exertion 0..1 over a session: rest, warm-up, run, cool-down,
    repeated with a period of `period_s`."""

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
class Skin:
    """Skin humidity under the shirt: sweat in, proportional to exertion;
    vapour out through the fabric, and much more through an open vent."""

    humidity: float = 45.0
    ambient: float = 40.0
    sweat_rate: float = 0.05  # %RH per second at full exertion
    fabric: float = 0.0015  # 1/s passive exchange
    vent_flow: float = 0.006  # 1/s extra exchange when fully open
    vent: float = 0.0  # flap opening, percent
    exertion: Exertion = field(default_factory=Exertion)

    @classmethod
    def random(cls, rng: random.Random) -> Skin:
        return cls(
            humidity=rng.uniform(40.0, 50.0),
            ambient=rng.uniform(30.0, 50.0),
            sweat_rate=rng.uniform(0.04, 0.07),
            fabric=rng.uniform(0.001, 0.002),
            vent_flow=rng.uniform(0.005, 0.008),
            exertion=Exertion(period_s=rng.uniform(2400.0, 4800.0), peak=rng.uniform(0.7, 1.0)),
        )

    def step(self, t: float, dt: float) -> None:
        e = self.exertion.at(t)
        out = (self.fabric + self.vent_flow * self.vent / 100.0) * (self.humidity - self.ambient)
        self.humidity += (self.sweat_rate * e - out) * dt
        self.humidity = min(100.0, max(0.0, self.humidity))

    def sensors(self, t: float) -> dict[str, float]:
        return {"humidity": self.humidity, "skin_temperature": 32.0 + 3.0 * self.exertion.at(t)}
