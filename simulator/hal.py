"""The simulator's HAL backend: the board's sensors read a physics model and
its actuators drive it. Same interface as the esp32 and host backends.

reset() is the base class's: it raises firmware.pb.hal.Reboot, which the
virtual device's boot loop (simulator/device.py) takes as a board's reset."""

from __future__ import annotations

from typing import Any, Protocol

from firmware.pb.errors import HalError
from firmware.pb.hal import RELAY, SERVO, Hal

from .clock import SimClock


class Plant(Protocol):
    """What a physics model offers a HAL."""

    def sensors(self, t: float) -> dict[str, float]: ...


class SimHal(Hal):  # type: ignore[misc]
    name = "sim"

    def __init__(self, board: dict[str, Any], plant: Any, clock: SimClock) -> None:
        super().__init__(board, ".")
        self.plant = plant
        self.clock = clock
        self.writes = 0
        self.resets = 0
        self.last_reset: str | None = None

    def read(self, name: str) -> float:
        if self.caps.get(name, {}).get("kind") != "sensor":
            raise HalError(f"no sensor {name!r} on this board")
        values = self.plant.sensors(self.clock.now())
        if name not in values:
            raise HalError(f"sensor {name} has no value")
        return float(self.check_reading(name, values[name]))

    def write(self, name: str, value: Any) -> None:
        value = self.check_value(name, value)
        kind = self.caps[name]["kind"]
        if kind == RELAY:
            self.plant.relay = value
        elif kind == SERVO:
            self.plant.vent = value
        self.writes += 1

    def time(self) -> float:
        return self.clock.now()

    def reset_cause(self) -> str:
        # what machine.reset_cause() says on a board: power-on at first, a
        # hard reset after every machine.reset()
        return "hard" if self.resets else "power_on"

    def reset(self, cause: str = "soft") -> None:
        """Restart the device: actuators safe, then Reboot(cause) is raised."""
        self.safe_state()
        self.resets += 1
        self.last_reset = cause
        super().reset(cause)

    def fault_point(self, name: str) -> None:
        """A point where power could be cut; nothing happens here (yet)."""
        return None
