"""A device of the fleet run by the real MicroPython unix port, for fidelity:
a provisioned device folder (as `permabeta provision --into` writes one, on
the host HAL) run as its own `micropython main.py` process with a capped
heap. The fleet's physics drives it through the host HAL's files: each
physics step writes the plant's sensor values to hal/sensors.json and reads
what the firmware drove from hal/actuators.json.

Its clock is the machine's (the unix port reads the real time), so a fleet
running faster than real time shows these devices' physics at the fleet's
pace but their timestamps at the real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from firmware.pb.store import write_atomic
from gateway.broker import BrokerUrl
from gateway.provision import board_for, provision_into

from .clock import SimClock

HEAP = "128K"  # an ESP32's free heap with Wi-Fi up, roughly (64-bit objects make it stricter)


def micropython_binary() -> str:
    """The unix port's command, from this environment."""
    return str(Path(sys.executable).parent / "micropython")


class ProcessDevice:
    """One device as a `micropython` process. Same life as a VirtualDevice
    for the fleet: run() until stop(), step(t, dt) for the physics."""

    def __init__(
        self,
        dev_id: str,
        model: str,
        broker: BrokerUrl,
        workdir: Path,
        clock: SimClock,
        seed: int,
        *,
        password: str = "",
        telemetry_s: float = 10,
        sample_s: float = 1,
        keepalive: int = 30,
        root: bytes | None = None,
        trial_s: float | None = None,
        heap: str = HEAP,
    ) -> None:
        self.id = dev_id
        self.model = model
        self.heap = heap
        self.clock = clock
        self.path = workdir / dev_id
        self.reflashed = not _provisioned(self.path, dev_id)
        if self.reflashed:
            provision_into(
                self.path,
                model,
                dev_id,
                broker,
                password=password or None,
                telemetry_s=telemetry_s,
                sample_s=sample_s,
                keepalive=keepalive,
                root=root,
                trial_s=trial_s,
                compile_mpy=True,  # as a board is flashed: source would not fit its heap
                force=True,
            )
        else:
            # a board flashed before keeps what it installed and recorded:
            # only where it connects and how often it reports are set again
            _reconfigure(self.path, model, broker, password, telemetry_s, sample_s, keepalive, trial_s)
            if root is not None:
                from .device import install_root

                install_root(self.path, root)
        from .device import PLANTS

        self.plant = PLANTS[model].random(random.Random(seed))
        self.proc: asyncio.subprocess.Process | None = None
        self.boots = 0
        self._stopping = False
        self._sensors_dir = self.path / "hal"
        self._sensors_dir.mkdir(exist_ok=True)
        self._actuators_mtime = 0.0
        self._board = board_for(model)
        self.plugged_in: set[str] = set()  # the add-ons plugged in: the sensor file names them

    def plug(self, addon: str, plugged: bool = True) -> None:
        """Plug an add-on into the board (or pull it out): the sensor file
        names it from the next physics step (pb/hal/host.py). Raises ConfigError."""
        from .device import check_addon

        check_addon(self._board, addon)
        if plugged:
            self.plugged_in.add(addon)
        else:
            self.plugged_in.discard(addon)
        self.step(self.clock.now(), 0.0)  # (the sensor file at once: a fleet steps it, a board alone not)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def log_text(self) -> str:
        path = self.path / "device.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def run(self) -> None:
        """Run the process until stop(); a process that ends by itself (a
        crash of the interpreter) is started again, as a board's watchdog would."""
        self.step(self.clock.now(), 0.0)  # sensor values before its first reading
        while not self._stopping:
            self.boots += 1
            with (self.path / "device.log").open("ab") as log:
                self.proc = await asyncio.create_subprocess_exec(
                    micropython_binary(),
                    "-X",
                    f"heapsize={self.heap}",
                    "main.py",
                    cwd=self.path,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # the supervisor and its child: one group
                )
            try:
                await self.proc.wait()
            except asyncio.CancelledError:
                self._kill(signal.SIGKILL)
                raise
            if not self._stopping:
                await asyncio.sleep(1.0)

    def _kill(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def power_cut(self) -> None:
        """SIGKILL to the whole device: the power is gone; run() starts it again."""
        self._kill(signal.SIGKILL)

    def stop(self) -> None:
        """Ctrl-C, as a developer stops a device on the unix port: the process
        ends where it stands, without a goodbye (the broker says its last will,
        offline `lost`), as a board's Ctrl-C at its REPL would."""
        self._stopping = True
        self._kill(signal.SIGINT)

    def step(self, t: float, dt: float) -> None:
        self.plant.advance(t)
        actuators = self._sensors_dir / "actuators.json"
        with contextlib.suppress(OSError, ValueError):
            m = actuators.stat().st_mtime
            if m != self._actuators_mtime:
                self._actuators_mtime = m
                out: dict[str, Any] = json.loads(actuators.read_bytes())
                if "relay" in out:
                    self.plant.relay = bool(out["relay"])
                if "vent" in out:
                    self.plant.vent = float(out["vent"])
        there = set(self._board["capabilities"]) | self.plugged_in
        values = {k: round(float(v), 3) for k, v in self.plant.sensors(t).items() if k in there}
        values.update({k: True for k in self.plugged_in if k not in values})  # (an actuator's driver)
        write_atomic(str(self._sensors_dir / "sensors.json"), json.dumps(values).encode())


def _provisioned(path: Path, dev_id: str) -> bool:
    """path holds a device folder provisioned for dev_id (its config and start-up)."""
    try:
        config = json.loads((path / "config.json").read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("device") == dev_id and (path / "main.py").is_file()


def _reconfigure(
    path: Path,
    model: str,
    broker: BrokerUrl,
    password: str,
    telemetry_s: float,
    sample_s: float,
    keepalive: int,
    trial_s: float | None,
) -> None:
    from gateway.provision import board_for, make_config

    config = json.loads((path / "config.json").read_bytes())
    fresh = make_config(
        config["device"],
        board_for(model),
        broker,
        password,
        telemetry_s=telemetry_s,
        sample_s=sample_s,
        keepalive=keepalive,
    )
    for key in ("broker", "telemetry_ms", "sample_ms"):
        config[key] = fresh[key]
    if trial_s is not None:
        config["ota_trial_s"] = trial_s
    write_atomic(str(path / "config.json"), json.dumps(config).encode())
