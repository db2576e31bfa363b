"""Faults a virtual device can suffer, injected from tests or the command
line: power cuts (now, at a named point of an update, after a while, or at
random), clock skew, a full flash, a stuck or noisy sensor, an actuator that
fails. Link faults (drops, latency, chunk corruption) are the link's
(simulator/link.py); a broker restart is the broker's.

A device's faults live in its DeviceFaults (VirtualDevice.faults); the HAL
and the flash consult it. Everything random draws from the device's own
seeded generator, so a run with the same seed suffers the same faults.
"""

from __future__ import annotations

import asyncio
import errno
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from firmware.pb.errors import HalError


class PowerCut(asyncio.CancelledError):
    """The power went: raised where it goes, so that no line after it runs.
    A CancelledError, so that no `except Exception` of the firmware can
    catch it and carry on."""


@dataclass
class SensorFault:
    """stuck: the sensor reads this value whatever happens (None: not
    stuck); noise: standard deviation of Gaussian noise added to each
    reading; fails: every read raises (a sensor gone)."""

    stuck: float | None = None
    noise: float = 0.0
    fails: bool = False


@dataclass
class DeviceFaults:
    """What is wrong with one device now. The fields are read by the HAL
    (simulator/hal.py), the flash (full_flash) and the boot loop."""

    rng: random.Random | int  # its generator, or the seed of one made when first needed (2.9 KB)
    skew_s: float = 0.0  # the device's clock minus true time
    flash_full: bool = False
    sensors: dict[str, SensorFault] = field(default_factory=dict)
    actuators_failing: set[str] = field(default_factory=set)
    # power cut at the fault point with this name (or when `passed` reaches this number)
    network_refusals: int = 0  # network_up calls left that fail: a Wi-Fi that does not associate
    cut_at_point: str | int | None = None
    cut_off_s: float = 1.0  # how long the power stays off
    points_passed: list[str] = field(default_factory=list)  # the latest (at most 1000)
    passed: int = 0  # fault points passed in all
    cuts: int = 0
    cuts_updating: int = 0  # of those, the ones that landed while an update was under way
    on_cut: Callable[[], None] | None = None  # set by the device: cut its power now

    def check_network(self) -> None:
        """The board asks for its network link (hal.network_up)."""
        if self.network_refusals > 0:
            self.network_refusals -= 1
            raise HalError("Wi-Fi did not connect")

    def fault_point(self, name: str) -> None:
        """The firmware passes a point where power could be cut (hal.fault_point)."""
        self.passed += 1
        self.points_passed.append(name)
        if len(self.points_passed) > 1000:
            del self.points_passed[:500]
        want = self.cut_at_point
        if want is None:
            return
        if want == name or (isinstance(want, int) and want == self.passed):
            self.cut_at_point = None
            self.cut()

    def cut(self) -> None:
        """Cut the power now; raises PowerCut when called from the device's
        own code (the line after it must not run)."""
        self.cuts += 1
        if self.on_cut is not None:
            self.on_cut()
        raise PowerCut("power cut")

    def reading(self, name: str, value: float) -> float:
        f = self.sensors.get(name)
        if f is None:
            return value
        if f.fails:
            from firmware.pb.errors import HalError

            raise HalError(f"sensor {name} does not answer")
        if f.stuck is not None:
            return f.stuck
        if not f.noise:
            return value
        if not isinstance(self.rng, random.Random):
            self.rng = random.Random(self.rng)
        return value + self.rng.gauss(0.0, f.noise)

    def check_write(self, name: str) -> None:
        if name in self.actuators_failing:
            from firmware.pb.errors import HalError

            raise HalError(f"actuator {name} does not respond")


# ---- a full flash --------------------------------------------------------------------
#
# The firmware writes files with open(); under the simulator every module of
# it that writes is given this open instead (through simulator/memflash.py,
# which serves a flash kept in RAM itself), which refuses to write into the
# flash folder of a device whose flash is full, as a board's filesystem
# does (OSError ENOSPC).

_full: dict[str, DeviceFaults] = {}  # a device's flash folder (str, with "/") -> its faults


def register_flash(base: Path | None, faults: DeviceFaults) -> None:
    """A device's flash folder (None: its flash is in RAM, which checks its
    faults itself) and its faults; the firmware's file calls routed."""
    if base is not None:
        _full[str(base.resolve()) + "/"] = faults
    _install()


def unregister_flash(base: Path) -> None:
    _full.pop(str(base.resolve()) + "/", None)


def flash_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> IO[Any]:
    full = [base for base, f in _full.items() if f.flash_full]
    if full and any(c in mode for c in "wax+"):
        # (the path resolved only while some flash is full: resolving costs a device's
        # every write some lstat calls)
        path = str(Path(file).resolve()) if isinstance(file, str | Path) else ""
        if any(path.startswith(base) for base in full):
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
    return open(file, mode, *args, **kwargs)


_installed = [False]


def _install() -> None:
    if _installed[0]:
        return
    import importlib

    from . import memflash

    memflash.install(open_for_disk=flash_open)  # (the firmware's every module that writes)
    otafs = importlib.import_module("firmware.pb.ota.files")
    real_free = otafs.free_bytes

    def free_bytes(path: str) -> int:
        p = str(Path(path).resolve()) + "/"
        if any(f.flash_full and p.startswith(base) for base, f in _full.items()):
            return 0
        return int(real_free(path))

    setattr(otafs, "free_bytes", free_bytes)  # noqa: B010 - the firmware is not type-checked
    _installed[0] = True
