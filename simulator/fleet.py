"""Many virtual devices sharing one asyncio loop, and their physics."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from gateway.broker import BrokerUrl

from .clock import SimClock
from .device import VirtualDevice

PHYSICS_STEP_S = 0.1  # real seconds between physics steps


class Fleet:
    def __init__(
        self,
        broker: BrokerUrl,
        workdir: Path,
        *,
        models: dict[str, int],
        seed: int = 0,
        speed: float = 1.0,
        telemetry_s: float = 10,
        sample_s: float = 1,
        prefix: dict[str, str] | None = None,
        root: bytes | None = None,
        trial_s: float | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        """Devices <prefix>-1, -2, ... of each model, with their flash in
        workdir/<id>/; root, trial_s, config: see VirtualDevice."""
        self.clock = SimClock(speed)
        self.devices: list[VirtualDevice] = []
        prefix = prefix or {"thermostat": "th", "shirt": "sh"}
        n = 0
        for model, count in models.items():
            for i in range(1, count + 1):
                dev_id = f"{prefix.get(model, model)}-{i}"
                self.devices.append(
                    VirtualDevice(
                        dev_id,
                        model,
                        broker,
                        workdir,
                        self.clock,
                        seed * 100003 + n,
                        telemetry_s=telemetry_s,
                        sample_s=sample_s,
                        root=root,
                        trial_s=trial_s,
                        config=config,
                    )
                )
                n += 1

    def device(self, dev_id: str) -> VirtualDevice:
        """The device with this id. Raises KeyError."""
        for d in self.devices:
            if d.id == dev_id:
                return d
        raise KeyError(dev_id)

    async def run(self) -> None:
        """Run every device and the physics until cancelled or stop()."""
        async with asyncio.TaskGroup() as tg:
            physics = tg.create_task(self._physics(), name="sim-physics")
            runs = [tg.create_task(d.run(), name=f"sim-{d.id}") for d in self.devices]
            await asyncio.gather(*runs)
            physics.cancel()

    def stop(self) -> None:
        for d in self.devices:
            d.stop()

    async def _physics(self) -> None:
        last = self.clock.now()
        while True:
            await asyncio.sleep(PHYSICS_STEP_S)
            now = self.clock.now()
            for d in self.devices:
                d.step(now, now - last)
            last = now
