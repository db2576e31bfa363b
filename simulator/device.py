"""A virtual device: the firmware's own runtime (firmware.pb.runtime.Device)
with the simulator's HAL and a physics model, booted as a board boots.

Each virtual device has a base folder (workdir/<id>/) standing for its
flash: the factory features (links to the firmware's own, shared by every
device), ota/root.json (the update keys it trusts) and whatever the update
agent writes (ota/job.json, ota/stage/, ota/a|b/, ota/active.json, ...),
and data/ (the runtime's records). Every (re)boot runs the board's start-up
logic on that folder: firmware.pb.prepare.choose installs a staged update (and
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

from firmware.pb.compat import format_exception
from firmware.pb.config import check as check_config
from firmware.pb.errors import ConfigError as FirmwareConfigError
from firmware.pb.errors import TrustError
from firmware.pb.hal import Reboot
from firmware.pb.ota import flash, roots
from firmware.pb.ota.updates import Boot
from firmware.pb.prepare import choose, lean_job
from firmware.pb.runtime import Device
from firmware.pb.start import run_device
from firmware.pb.store import makedirs, write_atomic
from gateway.broker import BrokerUrl
from gateway.errors import ConfigError
from gateway.paths import firmware_dir
from gateway.provision import CA_FILE, STREAMS_FILE, board_for, initial_streams, make_config

from .clock import SimClock
from .faults import DeviceFaults, PowerCut, register_flash, unregister_flash
from .hal import SimHal
from .loader import import_feature
from .memflash import MemFlash, flash_of
from .physics import Room, Skin

log = logging.getLogger("permabeta.sim")

PLANTS: dict[str, Any] = {"thermostat": Room, "shirt": Skin}
ROOT_FILE = flash.ROOT
POINTER_FILE = flash.POINTER
JOB_FILE = flash.JOB  # an update taken and not yet installed
_CRASH_PAUSE_S = 2.0  # as pb/start.py and main.py: calm down before restarting after a bug


def provision(
    base: Path, features: Sequence[str], root: bytes | None = None, board: dict[str, Any] | None = None
) -> None:
    """Write what a virtual device's flash holds before its first boot: the
    factory set base/features/<name> (a link per feature to the firmware's
    own folder: read-only, shared by every device), the trusted root and,
    given its board, the owner's data choices as provisioning writes them.
    A folder provisioned before keeps its data and update state. Raises
    ConfigError for an unknown feature or a root that is not self-signed."""
    flash = flash_of(str(base))
    if flash is not None:
        _provision_in_memory(flash, base, features, root, board)
        return
    factory = base / "features"
    factory.mkdir(parents=True, exist_ok=True)
    (base / "data").mkdir(exist_ok=True)
    streams = base / STREAMS_FILE
    if board is not None and not streams.exists():
        for name in features:
            if not (firmware_dir() / "features" / name / "manifest.json").is_file():
                raise ConfigError(f"no feature {name!r} in {firmware_dir() / 'features'}")
        write_atomic(str(streams), initial_streams(board, features))
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
        install_root(base, root)


def _provision_in_memory(
    flash: MemFlash, base: Path, features: Sequence[str], root: bytes | None, board: dict[str, Any] | None
) -> None:
    """provision() for a flash kept in RAM: the factory set mounted, read-only."""
    for name in features:
        if not (firmware_dir() / "features" / name / "manifest.json").is_file():
            raise ConfigError(f"no feature {name!r} in {firmware_dir() / 'features'}")
    makedirs(str(base / "features"))
    makedirs(str(base / "data"))
    if board is not None and flash.read(STREAMS_FILE) is None:
        write_atomic(str(base / STREAMS_FILE), initial_streams(board, features))
    for name in features:
        flash.mount(f"features/{name}", str(firmware_dir() / "features" / name))
    if root is not None:
        install_root(base, root)


def install_root(base: Path, root: bytes) -> None:
    """Make the device in base trust root: written as a root provisioned
    (base/ota/root.json), which its next boot takes unless it trusts a newer
    one already (one it rotated to stays; docs/ota.md 1.1). Raises
    ConfigError for a root that is not self-signed."""
    from firmware.pb.ota.trust import load_root
    from ota.envelope import verify_signature

    try:
        load_root(root, verify_signature)
    except TrustError as exc:
        raise ConfigError(f"the root given is not a valid, self-signed root: {exc.message}") from exc
    makedirs(str(base / "ota"))
    if roots.trusted_root(str(base))[1] != root:
        write_atomic(str(base / ROOT_FILE), root)


def check_addon(board: dict[str, Any], addon: str) -> None:
    """Raise ConfigError unless the board has a place for the add-on."""
    known = board.get("addons", {})
    if addon not in known:
        raise ConfigError(
            f"{board['board']} takes no add-on {addon!r} (it takes: {', '.join(sorted(known)) or 'none'})"
        )


def _device_log(dev: str, msg: str) -> None:
    log.debug("%s: %s", dev, msg)


class VirtualDevice:
    """One simulated board. root: the root.json it trusts (None: it refuses
    every update); trial_s: how long a new feature set runs before it
    commits; features: the factory set (default: the board's); config:
    more config.json settings. heap_free: the free heap the device has
    (None: plenty, as CPython says); below the config's ota_ram (48000 by
    default) it downloads updates in update mode, as a small board does
    (config "ota_mode": "lean"). ca: the broker's CA (DER), for a broker
    on mqtts:// (the device trusts it alone, as a board provisioned with it).
    ble_adapter: the BlueZ adapter of its Bluetooth LE radio (hci1, say): it
    then talks to the gateway over BLE, not the broker (config "link"), its
    radio a GATT peripheral on BlueZ driven by the firmware's own BLE link.
    in_memory: its flash kept in RAM (simulator/memflash.py: a board's
    power-cut semantics, no folder; `base` is then a path no disk has,
    which the firmware's file calls reach), else the folder workdir/<id>/."""

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
        plant: Any = None,
        image: bytes | None = None,
        slot_size: int = 256 * 1024,
        addons: Sequence[str] = (),
        ca: bytes | None = None,
        ble_adapter: str | None = None,
        in_memory: bool = False,
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
            ca=ca is not None,
        )
        self.config["hal"] = "sim"
        if trial_s is not None:
            self.config["ota_trial_s"] = trial_s
        self.config.update(config or {})
        try:
            check_config(self.config)  # as a board's boot does (firmware/pb/config.py)
        except FirmwareConfigError as exc:
            raise ConfigError(str(exc)) from exc
        if heap_free is not None and heap_free < self.config.get("ota_ram", 48000):
            self.config["ota_mode"] = "lean"
        self.plant = PLANTS[model].random(random.Random(seed)) if plant is None else plant
        self.clock = clock
        # (a copy: the HAL lets go of what RAM need not hold, the board's stream descriptions
        # that provisioning below writes the owner's first choices from)
        self.hal = SimHal(dict(self.board), self.plant, clock)
        if ble_adapter is not None:
            self.hal.ble_adapter = ble_adapter
            self.config["link"] = {"ble": True}
        for name in addons:
            self.plug(name)
        self.faults = DeviceFaults(seed ^ 0x5EED)
        self.faults.on_cut = self._power_gone
        self.hal.faults = self.faults
        self.flash: MemFlash | None = None
        if in_memory:
            if image is not None:
                raise ConfigError(f"{dev_id}: a device with app partitions (an image) keeps them in a folder")
            faults = self.faults
            self.flash = MemFlash(dev_id, full=lambda: faults.flash_full)
            self.base = Path(self.flash.base)
            self._seed = seed  # (what a power cut keeps of unsynced writes: seeded per cut)
            register_flash(None, self.faults)  # (the firmware's file calls routed)
        else:
            self.base = workdir / dev_id
            register_flash(self.base, self.faults)
        features = self.board.get("features", []) if features is None else features
        provision(self.base, features, root, self.board)
        if ca is not None:
            write_atomic(str(self.base / CA_FILE), ca)
        if image is not None:
            self._flash_image(image, slot_size)
        self.heap_free = heap_free
        self.device: Device | None = None  # the runtime, while it runs
        self.boot: Boot | None = None  # what the boot guard chose at the last boot
        self.mode = "off"  # off, runtime, update (update mode)
        self.boots = 0
        self.sent_before = 0  # messages published in earlier boots
        self._stopping = False
        self._run: asyncio.Task[str] | None = None
        self._cut = False  # the power went during this boot
        self._off: asyncio.Event | None = None  # set: the power may come back
        self._radio: tuple[Any, int] = (None, 0)  # a client, and the messages it carried

    def plug(self, addon: str, plugged: bool = True) -> None:
        """Plug an add-on module into the board (or pull it out): the
        runtime finds it at its next look (config scan_ms, pb/addons.py).
        Raises ConfigError for a part the board has no place for."""
        check_addon(self.board, addon)
        if plugged:
            self.hal.plugged_in.add(addon)
        else:
            self.hal.plugged_in.discard(addon)

    def _flash_image(self, image: bytes, slot_size: int) -> None:
        """Two app partitions of slot_size bytes under the device's flash
        (firmware/pb/hal/partitions.py), ota_0 holding image, as esptool
        writes a board; kept if the device has them already."""
        from firmware.pb.hal.partitions import MAGIC, Flash

        if not image or image[0] != MAGIC or len(image) > slot_size:
            raise ConfigError(
                f"{self.id}: an image is an ESP32 app image (first byte 0x{MAGIC:02X}) "
                f"of at most {slot_size} bytes"
            )
        fresh = not (self.base / "flash" / "ota_0.bin").exists()
        self.hal.slots = Flash(str(self.base), slot_size)
        if fresh:
            (self.base / "factory.bin").write_bytes(image)
            self.hal.slots.load_factory(str(self.base / "factory.bin"))
            (self.base / "factory.bin").unlink()

    # ---- what a test or the demo may look at ---------------------------------

    def read(self, rel: str) -> bytes | None:
        """The content of a file of its flash (rel to it), or None."""
        if self.flash is not None:
            return self.flash.read(rel)
        path = self.base / rel
        return path.read_bytes() if path.is_file() else None

    def pointer(self) -> dict[str, Any] | None:
        """ota/active.json (the set the next boot runs), or None: factory set."""
        data = self.read(POINTER_FILE)
        return dict(json.loads(data)) if data is not None else None

    def running(self) -> list[str]:
        """The features running now (none while rebooting or in update mode)."""
        d = self.device
        return sorted(d.features.running) if d is not None else []

    # ---- the boot loop ---------------------------------------------------------

    async def run(self) -> None:
        """Boot, run, and boot again after every reset or power cut, until stop()."""
        try:
            while not self._stopping:
                self.boots += 1
                self._cut = False
                try:
                    await self._boot()
                    if not self._cut:
                        return  # stopped
                except Reboot as r:
                    log.debug("%s: reset (%s)", self.id, r.cause)
                except PowerCut:
                    self._cut = True  # at boot, before anything ran
                except Exception as exc:  # noqa: BLE001 - as main.py on a board: whatever escapes, reset
                    log.warning("%s: boot failed, resetting: %s", self.id, format_exception(exc))
                    await asyncio.sleep(_CRASH_PAUSE_S)
                finally:
                    self.mode = "off"
                if self._cut:
                    await self._power_off()
        finally:
            if self.flash is None:
                unregister_flash(self.base)

    async def _power_off(self) -> None:
        log.debug("%s: power cut, off for %.1f s", self.id, self.faults.cut_off_s)
        self.hal.safe_state()  # no power, nothing driven: the relay drops out
        self.hal.powered_on = True  # it comes back with a power-on reset
        self._off = asyncio.Event()
        try:
            await asyncio.wait_for(self._off.wait(), self.faults.cut_off_s)
        except TimeoutError:
            pass
        finally:
            self._off = None

    async def _boot(self) -> None:
        """One boot, as a board's: the boot guard's choice (installing a
        staged update first), then update mode or the runtime, through the
        firmware's own start-up (firmware.pb.start.run_device). Raises Reboot."""
        base = str(self.base)
        self.mode = "booting"
        if self.hal.slots is not None:
            # the bootloader first, as on a board: the image to run (and one
            # never marked valid taken back)
            self.hal.image = self.hal.slots.boot().label
        chosen = choose(base, self.config, self.hal)  # may raise PowerCut (an install cut short)
        self.boot = Boot(*chosen)
        self.mode = "update" if lean_job(base) else "runtime"
        self._run = asyncio.create_task(
            run_device(
                base,
                self.config,
                self.hal,
                chosen,
                self.mode == "update",
                importer=import_feature,
                log=_device_log,
                on_device=self._attach,
            ),
            name=f"sim-{self.id}-boot",
        )
        try:
            cause = await self._run
        except asyncio.CancelledError:
            if self._stopping or self._cut:
                return
            raise
        finally:
            self._run = None
            if self.device is not None:
                self.sent_before += self.device.client.stats["sent"]
            self.device = None
        if cause != "stop":
            self.hal.reset(cause)

    def power_cut(self, off_s: float | None = None) -> None:
        """Cut the power now: everything stops where it stands, with no
        goodbye (the broker sends the last will); it comes back after off_s
        seconds (default: faults.cut_off_s) with a power-on boot."""
        if off_s is not None:
            self.faults.cut_off_s = off_s
        self.faults.cuts += 1
        self._power_gone()

    def power_on(self) -> None:
        """End a power cut now (the device boots as it would after off_s)."""
        if self._off is not None:
            self._off.set()

    def updating(self) -> bool:
        """An update is under way on this device: taken and not yet
        installed (downloading, in update mode, staged, installing at boot),
        or its new set on trial."""
        if (JOB_FILE in self.flash.files) if self.flash is not None else (self.base / JOB_FILE).is_file():
            return True
        return self.mode != "off" and self.boot is not None and bool(self.boot.trial)

    def deferred(self) -> bool:
        """The runtime holds an offered update back: its agent waits for
        charge or for idle features, or the offer waits on flash for idle
        features before the reset into update mode."""
        dev = self.device  # (the runtime's: None in update mode)
        if dev is None:
            return False
        agent = dev.updates.agent
        # (the agent's held is set by pb/ota/defer.py only: no name more in update mode's RAM)
        return dev.updates.held is not None or getattr(agent, "held", None) is not None

    def _power_gone(self) -> None:
        if self._cut or self.mode == "off":
            return
        if self.updating():
            self.faults.cuts_updating += 1
        self._cut = True
        if self.flash is not None:
            # before any task it stops closes a file (a generator made per cut: one
            # kept per device would cost it 2.5 KB)
            self.flash.cut(random.Random(f"{self._seed}:tear:{self.faults.cuts}:{self.boots}"))
        if self.device is not None:
            self.device.halt()
        if self._run is not None:
            self._run.cancel()

    def _attach(self, device: Device) -> None:
        self.device = device

    def stop(self) -> None:
        """Shut down as the user pulling the plug gently: the runtime says
        goodbye; update mode is cancelled."""
        self._stopping = True
        if self._off is not None:
            self._off.set()
        if self.device is not None:
            self.device.stop("stop")
        elif self._run is not None:
            self._run.cancel()  # update mode

    def step(self, t: float, dt: float) -> None:
        battery = getattr(self.plant, "battery", None)
        client = self.device.client if self.device is not None else None
        if battery is not None and client is not None:
            # the radio's share: the messages the runtime's client carried since the last step
            n = client.stats["sent"] + client.stats["received"]
            seen = self._radio[1] if self._radio[0] is client else 0
            battery.radio(n - seen)
            self._radio = (client, n)
        self.plant.step(t, dt)
