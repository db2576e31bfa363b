"""The simulator's HAL backend: the board's sensors read a physics model and
its actuators drive it. Same interface as the esp32 and host backends.

reset() is the base class's: it raises firmware.pb.hal.Reboot, which the
virtual device's boot loop (simulator/device.py) takes as a board's reset."""

from __future__ import annotations

from typing import Any, Protocol

from firmware.pb.errors import HalError
from firmware.pb.hal import RELAY, SERVO, Hal

from .clock import SimClock
from .faults import DeviceFaults


class Plant(Protocol):
    """What a physics model offers a HAL (simulator/physics.py): advance(t)
    integrates it up to t; sensors(t) are its readings then."""

    def advance(self, t: float) -> None: ...

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
        self.powered_on = True  # since the last power-on, no reset
        self.faults: DeviceFaults | None = None
        self.network_tries: list[float] = []  # when the firmware asked for its network link
        # the board's app partitions (firmware/pb/hal/partitions.py, the
        # stand-in), if it has them, and the one its bootloader chose
        self.slots: Any = None
        self.image: str | None = None
        self.plugged_in: set[str] = set()  # the add-ons plugged into the board (VirtualDevice.plug)
        self.ble_adapter: str | None = None  # the BlueZ adapter its radio is on (None: it has none)
        self.ble: Any = None  # its radio, once the firmware asked for it (simulator/ble_radio.py)

    def radio(self, config: dict[str, Any]) -> Any:
        """The board's Bluetooth LE radio: a GATT peripheral on BlueZ, on
        ble_adapter. Raises HalError on a virtual board given none."""
        if self.ble_adapter is None:
            raise HalError("this virtual board has no Bluetooth LE radio (VirtualDevice ble_adapter)")
        from .ble_radio import SimRadio

        if self.ble is None:  # (the board's: the same across its resets)
            self.ble = SimRadio(self.ble_adapter, config["device"])
        return self.ble

    def scan(self) -> list[str]:
        """The add-ons plugged in: what a board's bus scan would find."""
        return sorted(self.plugged_in)

    def read(self, name: str) -> float:
        if self.caps.get(name, {}).get("kind") != "sensor":
            raise HalError(f"no sensor {name!r} on this board")
        now = self.clock.now()
        self.plant.advance(now)
        values = self.plant.sensors(now)
        if name not in values:
            raise HalError(f"sensor {name} has no value")
        value = values[name]
        if self.faults is not None:
            value = self.faults.reading(name, value)  # stuck, noisy, or not answering
        return float(self.check_reading(name, value))

    async def network_up(self, config: dict[str, Any]) -> None:
        """The network link, which a board brings up at every boot (its
        Wi-Fi); refused while the device's faults say so."""
        self.network_tries.append(self.clock.now())
        if self.faults is not None:
            self.faults.check_network()

    def write(self, name: str, value: Any) -> None:
        value = self.check_value(name, value)
        if self.faults is not None:
            self.faults.check_write(name)  # an actuator that fails
        kind = self.caps[name]["kind"]
        # the plant runs up to now with the actuator as it was, so the change
        # takes effect at this moment, whatever the physics loop's step
        self.plant.advance(self.clock.now())
        if kind == RELAY:
            self.plant.relay = value
        elif kind == SERVO:
            setattr(self.plant, name, value)  # (the vent, or a second one an add-on drives)
        self.writes += 1

    def time(self) -> float:
        return self.clock.now() + (self.faults.skew_s if self.faults is not None else 0.0)

    def set_time(self, t: float) -> None:
        """Set the device's clock to t (its signed floor, ota.md 2.3): the
        skew left is the one this sets."""
        if self.faults is not None:
            self.faults.skew_s = t - self.clock.now()

    def partition(self) -> Any:
        """esp32.Partition of this board's app partitions, or None."""
        if self.slots is None:
            return None
        self.slots.running = self.image
        return self.slots.Partition

    def reset_cause(self) -> str:
        # what machine.reset_cause() says on a board: power-on at first and
        # after a power cut, a hard reset after every machine.reset()
        return "power_on" if self.powered_on else "hard"

    def reset(self, cause: str = "soft") -> None:
        """Restart the device: actuators safe, then Reboot(cause) is raised."""
        self.safe_state()
        self.resets += 1
        self.last_reset = cause
        self.powered_on = False
        super().reset(cause)

    def fault_point(self, name: str) -> None:
        """A point where power could be cut: the device's faults decide
        (simulator/faults.py); raises PowerCut if it goes here."""
        if self.faults is not None:
            self.faults.fault_point(name)
