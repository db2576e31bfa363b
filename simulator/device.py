"""A virtual device: the firmware's own runtime (firmware.pb.runtime.Device)
with the simulator's HAL and a physics model, booted as a board boots.

Each virtual device has a base folder (workdir/<id>/) standing for its
flash: the factory features (links to the firmware's own, shared by every
device), ota/root.json (the update keys it trusts) and whatever the update
agent writes (ota/job.json, ota/stage/, ota/a|b/, ota/active.json, ...),
and data/ (the runtime's records). Every (re)boot runs the board's start-up
logic on that folder: firmware.pb.setup.choose installs a staged update (and
resets) or asks the boot guard for the feature set, then the runtime runs
that set, or update mode runs the download alone. A reset is
firmware.pb.hal.Reboot, raised by the HAL; the boot loop starts again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from firmware.pb.boot import Boot
from firmware.pb.compat import format_exception
from firmware.pb.errors import TrustError
from firmware.pb.hal import Reboot
from firmware.pb.runtime import Device
from firmware.pb.setup import choose, lean_job
from firmware.pb.store import Store, write_atomic
from gateway.broker import BrokerUrl
from gateway.errors import ConfigError
from gateway.paths import firmware_dir
from gateway.provision import board_for, make_config

from .clock import SimClock
from .hal import SimHal
from .loader import import_feature
from .physics import Room, Skin

log = logging.getLogger("permabeta.sim")

PLANTS: dict[str, Any] = {"thermostat": Room, "shirt": Skin}
ROOT_FILE = "ota/root.json"
POINTER_FILE = "ota/active.json"
_CRASH_PAUSE_S = 2.0  # as pb/boot.py: calm down before restarting after a runtime bug


def provision(base: Path, features: Sequence[str], root: bytes | None = None) -> None:
    """Write what a virtual device's flash holds before its first boot: the
    factory set base/features/<name> (a link per feature to the firmware's
    own folder: read-only, shared by every device) and the trusted root.
    A folder provisioned before keeps its data and update state. Raises
    ConfigError for an unknown feature or a root that is not self-signed."""
    factory = base / "features"
    factory.mkdir(parents=True, exist_ok=True)
    (base / "data").mkdir(exist_ok=True)
    wanted = set(features)
    for link in factory.iterdir():
        if link.name not in wanted and link.is_symlink():
            link.unlink()
    for name in features:
        target = firmware_dir() / "features" / name
        if not (target / "manifest.json").is_file():
            raise ConfigError(f"no feature {name!r} in {target.parent}")
        link = factory / name
        if link.is_symlink() and link.readlink() != target:
            link.unlink()
        if not link.is_symlink():
            link.symlink_to(target, target_is_directory=True)
    if root is not None:
        from firmware.pb.trust import load_root
        from ota.envelope import verify_signature

        try:
            load_root(root, verify_signature)
        except TrustError as exc:
            raise ConfigError(f"the root given is not a valid, self-signed root: {exc.message}") from exc
        path = base / ROOT_FILE
        path.parent.mkdir(exist_ok=True)
        if not path.is_file() or path.read_bytes() != root:
            write_atomic(str(path), root)


def _device_log(dev: str, msg: str) -> None:
    log.debug("%s: %s", dev, msg)


class VirtualDevice:
    """One simulated board. root: the root.json it trusts (None: it refuses
    every update); trial_s: how long a new feature set runs before it
    commits; features: the factory set (default: the board's); config:
    more config.json settings. heap_free: the free heap the device has
    (None: plenty, as CPython says); below the config's ota_ram (48000 by
    default) it downloads updates in update mode, as a small board does."""

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
        features: Sequence[str] | None = None,
        config: dict[str, Any] | None = None,
        heap_free: int | None = None,
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
        if trial_s is not None:
            self.config["ota_trial_s"] = trial_s
        self.config.update(config or {})
        self.plant = PLANTS[model].random(random.Random(seed))
        self.clock = clock
        self.hal = SimHal(self.board, self.plant, clock)
        self.base = workdir / dev_id
        provision(self.base, self.board.get("features", []) if features is None else features, root)
        self.heap_free = heap_free
        self.device: Device | None = None  # the runtime, while it runs
        self.boot: Boot | None = None  # what the boot guard chose at the last boot
        self.mode = "off"  # off, runtime, update (update mode)
        self.boots = 0
        self._stopping = False
        self._lean: asyncio.Task[str] | None = None

    # ---- what a test or the demo may look at ---------------------------------

    def pointer(self) -> dict[str, Any] | None:
        """ota/active.json (the set the next boot runs), or None: factory set."""
        path = self.base / POINTER_FILE
        return dict(json.loads(path.read_bytes())) if path.is_file() else None

    def running(self) -> list[str]:
        """The features running now (none while rebooting or in update mode)."""
        d = self.device
        return sorted(d.features.running) if d is not None else []

    # ---- the boot loop ---------------------------------------------------------

    async def run(self) -> None:
        """Boot, run, and boot again after every reset, until stop()."""
        while not self._stopping:
            self.boots += 1
            try:
                await self._boot()
                return  # stopped
            except Reboot as r:
                log.debug("%s: reset (%s)", self.id, r.cause)
            finally:
                self.mode = "off"

    async def _boot(self) -> None:
        """One boot, as pb/boot.py's _run does it after reading config.json
        and making the HAL (which the simulator supplies). Raises Reboot."""
        base = str(self.base)
        self.boot = boot = Boot(*choose(base, self.config, self.hal))
        if lean_job(base):
            self.mode = "update"
            from firmware.pb.updatemode import run as update_mode

            self._lean = asyncio.create_task(
                update_mode(base, self.config, self.hal, boot.counter(), boot.root), name=f"sim-{self.id}-lean"
            )
            try:
                cause = await self._lean
            except asyncio.CancelledError:
                if self._stopping:
                    return
                raise
            finally:
                self._lean = None
            self.hal.reset(cause)
        if self._stopping:
            return
        device = Device(
            self.config,
            self.hal,
            Store(base + "/data"),
            boot=boot,
            base=base,
            importer=import_feature,
            log=_device_log,
        )
        if self.heap_free is not None:
            device.updates._roomy = self._roomy  # see _roomy
        self.device = device
        self.mode = "runtime"
        try:
            cause = await device.run()
        except Exception as exc:  # noqa: BLE001 - as on a board: a runtime bug ends in a clean restart
            log.warning("%s: runtime crashed: %s", self.id, format_exception(exc))
            device.state["reset_request"] = "crash"
            device.state["last_crash"] = format_exception(exc)[:200]
            device.store.save("state", device.state)
            self.hal.safe_state()
            await asyncio.sleep(_CRASH_PAUSE_S)
            cause = "crash"
        finally:
            self.device = None
        if cause != "stop":
            self.hal.reset(cause)

    def _roomy(self) -> bool:
        # The runtime asks compat.mem_free(), which is -1 (plenty) under
        # CPython; a simulated small heap answers here instead.
        # (firmware/pb/updates.py Updates._roomy: see the simulator's notes.)
        need = self.config.get("ota_ram", 48000)
        return self.heap_free is None or self.heap_free >= need

    def stop(self) -> None:
        """Shut down as the user pulling the plug gently: the runtime says
        goodbye; update mode is cancelled."""
        self._stopping = True
        if self.device is not None:
            self.device.stop("stop")
        if self._lean is not None:
            self._lean.cancel()

    def step(self, t: float, dt: float) -> None:
        self.plant.step(t, dt)

