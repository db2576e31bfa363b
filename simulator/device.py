"""A virtual device: the firmware's own runtime (firmware.pb.runtime.Device)
with the simulator's HAL and a physics model, restarted in place when it
reboots, as a board would be."""

from __future__ import annotations

import logging
import random
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

log = logging.getLogger("permabeta.sim")

PLANTS: dict[str, Any] = {"thermostat": Room, "shirt": Skin}


def factory_features(workdir: Path, board: dict[str, Any]) -> Path:
    """A folder holding just the board's factory features (links to the
    firmware's own), as a provisioned device's features/ folder would."""
    root: Path = workdir / "_factory" / str(board["board"]) / "features"
    root.mkdir(parents=True, exist_ok=True)
    for name in board.get("features", []):
        link = root / name
        if not link.exists():
            link.symlink_to(firmware_dir() / "features" / name, target_is_directory=True)
    return root


def _device_log(dev: str, msg: str) -> None:
    log.debug("%s: %s", dev, msg)


class VirtualDevice:
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
    ) -> None:
        self.id = dev_id
        self.model = model
        self.board = board_for(model)
        self.config = make_config(
            dev_id,
            self.board,
            broker,
            password,
            telemetry_s=telemetry_s,
            sample_s=sample_s,
            keepalive=keepalive,
        )
        self.config["hal"] = "sim"
        self.plant = PLANTS[model].random(random.Random(seed))
        self.clock = clock
        self.hal = SimHal(self.board, self.plant, clock)
        self.store = Store(str(workdir / dev_id))
        self.features_root = str(factory_features(workdir, self.board))
        self.device: Device | None = None
        self.boots = 0
        self._stopping = False

    async def run(self) -> None:
        """Boot, run, and boot again after every reboot until stop()."""
        while not self._stopping:
            self.device = Device(
                self.config,
                self.hal,
                self.store,
                self.features_root,
                importer=import_feature,
                log=_device_log,
            )
            self.boots += 1
            cause = await self.device.run()
            if cause == "stop":
                return
            log.debug("%s: reset (%s)", self.id, cause)

    def stop(self) -> None:
        self._stopping = True
        if self.device is not None:
            self.device.stop("stop")

    def step(self, t: float, dt: float) -> None:
        self.plant.step(t, dt)
