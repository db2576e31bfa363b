"""Many virtual devices sharing one asyncio loop, their physics, and the
faults injected into them: the simulator's Python API.

    fleet = Fleet(broker, workdir, models={"thermostat": 100, "shirt": 100}, seed=7)
    task = fleet.start()                  # or: await fleet.run()
    await fleet.wait_connected(30)
    fleet.faults.power_cut("th-3")        # see FleetFaults
    fleet.truth("sh-1")                   # the physics' ground truth
    fleet.summary()                       # connected, updating, failed, messages/s
    await fleet.aclose()

Deterministic for a seed: the same seed gives the same device ids, the same
physics parameters per device and the same random faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gateway.broker import BrokerUrl
from gateway.provision import board_for

from .clock import SimClock
from .device import VirtualDevice
from .faults import SensorFault
from .physics import _MAX_STEP_S
from .process import ProcessDevice

PHYSICS_STEP_S = 0.1  # real seconds between physics steps
MODELS = ("thermostat", "shirt")
DEFAULT_PREFIX = {"thermostat": "th", "shirt": "sh"}


class Restartable(Protocol):
    """A broker the simulator may restart (tests' Mosquitto, `sim run`'s own)."""

    def restart(self, down_for: float = 0.0) -> None: ...


def split(n: int, models: Iterable[str]) -> dict[str, int]:
    """n devices shared out over models as evenly as possible, in order."""
    names = list(models)
    if not names:
        raise ValueError("no models given")
    return {m: n // len(names) + (1 if i < n % len(names) else 0) for i, m in enumerate(names)}


@dataclass
class Summary:
    devices: int
    connected: int
    updating: int  # downloading (in the background or in update mode) or rebooting into a new set
    failed: int  # in safe mode, or a feature that failed
    off: int  # rebooting or without power
    messages_per_s: float  # published by the devices, over the last summary's interval
    resets: int
    power_cuts: int
    processes: int = 0  # devices run by the unix port (not counted above: seen from outside only)
    processes_running: int = 0
    power_cuts_updating: int = 0  # of power_cuts, those that landed during an update
    deferred: int = 0  # holding an offered update back (a low battery, a busy feature): not in updating

    def line(self) -> str:
        text = (
            f"{self.connected}/{self.devices} connected, {self.updating} updating, "
            f"{self.deferred} deferred, {self.failed} failed, "
            f"{self.off} off, {self.messages_per_s:.0f} msg/s, {self.resets} resets, "
            f"{self.power_cuts} power cuts ({self.power_cuts_updating} during an update)"
        )
        if self.processes:
            text += f"; micropython: {self.processes_running}/{self.processes} running"
        return text


class Fleet:
    def __init__(
        self,
        broker: BrokerUrl | str,
        workdir: Path,
        *,
        models: dict[str, int],
        seed: int = 0,
        speed: float = 1.0,
        start: float | None = None,
        telemetry_s: float = 10,
        sample_s: float = 1,
        prefix: dict[str, str] | None = None,
        root: bytes | None = None,
        trial_s: float | None = None,
        config: dict[str, Any] | None = None,
        passwords: Callable[[str], str] | None = None,
        broker_for: Callable[[str], BrokerUrl] | None = None,
        keepalive: int = 30,
        micropython: int = 0,
        addons: Sequence[str] = (),
        plants: dict[str, Any] | None = None,
        in_memory: bool = False,
    ) -> None:
        """Devices <prefix>-1, -2, ... of each model of the broker (a BrokerUrl,
        or its URL, `mqtt://127.0.0.1:1883`), with their flash in
        workdir/<id>/, their clocks running `speed` times faster than real
        time from `start` (default: now); root, trial_s, config: see
        VirtualDevice. passwords(id): a device's broker password;
        broker_for(id): the broker a device connects to (a link,
        simulator/link.py), default `broker`. micropython: how many of
        them (the last of each model in turn) run as real `micropython`
        processes instead (simulator/process.py). addons: add-on modules
        plugged into every device whose board takes them. plants: a
        device's own physics (simulator/physics.py) by id, instead of one
        drawn from the seed. in_memory: the virtual devices' flash kept in
        RAM (simulator/memflash.py), no folder each."""
        if isinstance(broker, str):
            broker = BrokerUrl.parse(broker)
        self.clock = SimClock(speed, start)
        self.seed = seed
        self.broker = broker
        self.devices: list[VirtualDevice] = []
        self.processes: list[ProcessDevice] = []
        self._by_id: dict[str, VirtualDevice] = {}
        prefix = prefix or DEFAULT_PREFIX
        as_process = _process_ids(models, prefix, micropython)
        n = 0
        for model, count in models.items():
            for i in range(1, count + 1):
                dev_id = f"{prefix.get(model, model)}-{i}"
                args = (
                    dev_id,
                    model,
                    broker_for(dev_id) if broker_for is not None else broker,
                    workdir,
                    self.clock,
                )
                options: dict[str, Any] = {
                    "password": passwords(dev_id) if passwords is not None else "",
                    "telemetry_s": telemetry_s,
                    "sample_s": sample_s,
                    "keepalive": keepalive,
                    "root": root,
                    "trial_s": trial_s,
                }
                seed_n = seed * 100003 + n
                n += 1
                plugged = [a for a in addons if a in board_for(model).get("addons", {})]
                if dev_id in as_process:
                    p = ProcessDevice(*args, seed_n, **options)
                    for a in plugged:
                        p.plug(a)
                    self.processes.append(p)
                    continue
                d = VirtualDevice(
                    *args,
                    seed_n,
                    config=config,
                    addons=plugged,
                    plant=(plants or {}).get(dev_id),
                    in_memory=in_memory,
                    **options,
                )
                self.devices.append(d)
                self._by_id[dev_id] = d
        self.faults = FleetFaults(self, random.Random(seed ^ 0xFA17))
        self._task: asyncio.Task[None] | None = None
        self._last = (time.monotonic(), 0)

    def device(self, dev_id: str) -> VirtualDevice:
        """The device with this id. Raises KeyError."""
        return self._by_id[dev_id]

    # ---- running -------------------------------------------------------------------

    async def run(self) -> None:
        """Run every device and the physics until cancelled or stop()."""
        async with asyncio.TaskGroup() as tg:
            physics = tg.create_task(self._physics(), name="sim-physics")
            runs = [tg.create_task(d.run(), name=f"sim-{d.id}") for d in self.devices]
            runs += [tg.create_task(p.run(), name=f"sim-{p.id}") for p in self.processes]
            await asyncio.gather(*runs)
            physics.cancel()
            self.faults.cancel()

    def start(self) -> asyncio.Task[None]:
        """run() in the background; aclose() ends it."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="sim-fleet")
        return self._task

    def stop(self) -> None:
        for d in self.devices:
            d.stop()
        for p in self.processes:
            p.stop()

    async def aclose(self, timeout: float = 15) -> None:
        """Stop every device (each says goodbye) and wait for them."""
        self.stop()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, timeout)

    async def step(self, sim_s: float) -> None:
        """Let sim_s seconds of simulated time pass (sim_s / speed real ones)."""
        await self.clock.sleep(sim_s)

    async def wait_connected(self, timeout: float, devices: Iterable[str] | None = None) -> None:
        """Until every device (or those named) is connected to its broker.
        Raises TimeoutError."""
        want = [self.device(d) for d in devices] if devices is not None else self.devices
        deadline = time.monotonic() + timeout
        while not all(_connected(d) for d in want):
            if time.monotonic() > deadline:
                missing = [d.id for d in want if not _connected(d)]
                raise TimeoutError(f"{len(missing)} devices not connected after {timeout}s: {missing[:10]}")
            await asyncio.sleep(0.05)

    async def _physics(self) -> None:
        # no more often than a plant needs: it sub-steps 5 simulated s at
        # most, and reads, writes and truth() bring it up to date between
        # times (a step of 1 s would cost an idle fleet five times the work)
        period = max(PHYSICS_STEP_S, _MAX_STEP_S / self.clock.speed)
        if self.processes:
            period = min(1.0, period)  # (a step carries the unix-port boards' readings and relays)
        last = self.clock.now()
        while True:
            await asyncio.sleep(period)
            now = self.clock.now()
            for d in self.devices:
                d.step(now, now - last)
            for p in self.processes:
                p.step(now, now - last)
            last = now

    # ---- looking at it -------------------------------------------------------------

    def truth(self, dev_id: str) -> dict[str, Any]:
        """The physics' ground truth of a device's world now."""
        plant = self.device(dev_id).plant
        plant.advance(self.clock.now())
        return dict(plant.truth())

    def summary(self) -> Summary:
        """The fleet now; messages/s since the last summary."""
        connected = updating = deferred = failed = off = sent = resets = 0
        for d in self.devices:
            dev = d.device
            if dev is not None:
                sent += dev.client.stats["sent"] + d.sent_before
            else:
                sent += d.sent_before
            if _connected(d):
                connected += 1
            # (an agent stays once made, waiting for the next offer: a device updates while it has a job)
            agent = dev.updates.agent if dev is not None else None
            if d.deferred():
                deferred += 1
            elif d.mode == "update" or (agent is not None and agent.job is not None):
                updating += 1
            elif d.mode in ("off", "booting"):
                off += 1
            if (d.boot is not None and d.boot.root is None) or (
                dev is not None and any(s.get("error") for s in dev.features.status().values())
            ):
                failed += 1
            resets += d.hal.resets
        now = time.monotonic()
        t0, sent0 = self._last
        self._last = (now, sent)
        rate = (sent - sent0) / (now - t0) if now > t0 else 0.0
        cuts = sum(d.faults.cuts for d in self.devices)
        procs = sum(1 for p in self.processes if p.running)
        return Summary(
            len(self.devices),
            connected,
            updating,
            failed,
            off,
            max(rate, 0.0),
            resets,
            cuts,
            len(self.processes),
            procs,
            sum(d.faults.cuts_updating for d in self.devices),
            deferred,
        )


def _process_ids(models: dict[str, int], prefix: dict[str, str], k: int) -> set[str]:
    """The ids of the k devices that run as processes: the last of each
    model in turn."""
    left = dict(models)
    ids: set[str] = set()
    while len(ids) < k and any(left.values()):
        for model in models:
            if left[model] and len(ids) < k:
                ids.add(f"{prefix.get(model, model)}-{left[model]}")
                left[model] -= 1
    return ids


def _connected(d: VirtualDevice) -> bool:
    dev = d.device
    return dev is not None and bool(dev.client.up)


class FleetFaults:
    """Faults on demand, for a device by id (or every device: dev=None where
    it says so). Random choices draw from the fleet's seeded generator."""

    def __init__(self, fleet: Fleet, rng: random.Random) -> None:
        self.fleet = fleet
        self.rng = rng
        self.broker: Restartable | None = None  # set where the simulator may restart the broker
        self.link: Any = None  # a simulator.link.Link the devices connect through, if any
        self._tasks: set[asyncio.Task[None]] = set()

    def _devices(self, dev: str | None) -> list[VirtualDevice]:
        return list(self.fleet.devices) if dev is None else [self.fleet.device(dev)]

    def pick(self) -> str:
        """A device id, at random."""
        return self.rng.choice(self.fleet.devices).id

    # ---- power ---------------------------------------------------------------------

    def power_cut(self, dev: str, off_s: float = 1.0) -> None:
        """Cut dev's power now; it comes back after off_s."""
        self.fleet.device(dev).power_cut(off_s)

    def power_cut_at(self, dev: str, point: str | int, off_s: float = 1.0) -> None:
        """Cut dev's power when it next passes the fault point `point` (a
        name: "chunk", "staged", "activate", "commit", ... see docs/ota.md;
        or n: the nth point from now)."""
        d = self.fleet.device(dev)
        d.faults.cut_off_s = off_s
        d.faults.cut_at_point = point if isinstance(point, str) else d.faults.passed + point

    def random_power_cuts(self, per_hour: float, off_s: float = 2.0, dev: str | None = None) -> None:
        """Power cuts at random moments (a Poisson process per device, in
        real time) until cancel(); per_hour=0 stops them."""
        if per_hour <= 0:
            self.cancel()
            return
        for d in self._devices(dev):
            self._spawn(self._cutting(d, per_hour, off_s))

    async def _cutting(self, d: VirtualDevice, per_hour: float, off_s: float) -> None:
        while True:
            await asyncio.sleep(self.rng.expovariate(per_hour / 3600.0))
            if d.mode in ("runtime", "update"):
                d.power_cut(off_s)

    # ---- clock, flash, sensors, actuators -----------------------------------------

    def clock_skew(self, skew_s: float, dev: str | None = None) -> None:
        """Set the device's clock skew_s seconds off true time (0: right)."""
        for d in self._devices(dev):
            d.faults.skew_s = skew_s

    def network_down(self, tries: int, dev: str | None = None) -> None:
        """The device's next `tries` requests for its network link (Wi-Fi
        association, hal.network_up) fail with HalError."""
        for d in self._devices(dev):
            d.faults.network_refusals = tries

    def flash_full(self, full: bool = True, dev: str | None = None) -> None:
        """Every write to the device's flash fails (ENOSPC) while full."""
        for d in self._devices(dev):
            d.faults.flash_full = full

    def sensor(
        self,
        dev: str,
        name: str,
        *,
        stuck: float | None = None,
        noise: float = 0.0,
        fails: bool = False,
    ) -> None:
        """A sensor stuck at a value, noisy (Gaussian, sd `noise`) or not
        answering; all defaults: the sensor is well again."""
        d = self.fleet.device(dev)
        if stuck is None and not noise and not fails:
            d.faults.sensors.pop(name, None)
        else:
            d.faults.sensors[name] = SensorFault(stuck, noise, fails)

    def actuator_fails(self, dev: str, name: str, fails: bool = True) -> None:
        """Every write to the actuator fails (HalError) while it fails."""
        failing = self.fleet.device(dev).faults.actuators_failing
        if fails:
            failing.add(name)
        else:
            failing.discard(name)

    # ---- the battery ----------------------------------------------------------------

    def battery(self, dev: str, charge: float | None = None, charger: bool | None = None) -> None:
        """Set the battery of dev's board (the shirt's): its charge in %
        (0-100) and whether it is on its charger; None leaves either as it
        is. Raises ValueError for a device without a battery or a charge
        outside 0-100."""
        d = self.fleet.device(dev)
        cell = getattr(d.plant, "battery", None)
        if cell is None:
            raise ValueError(f"{dev} ({d.model}) has no battery")
        if charge is not None and not 0.0 <= charge <= 100.0:
            raise ValueError(f"a battery's charge is 0-100 %, not {charge!r}")
        d.plant.advance(self.fleet.clock.now())  # the change takes effect now
        if charge is not None:
            cell.charge = float(charge)
        if charger is not None:
            cell.charger = charger

    # ---- the broker and the link ---------------------------------------------------

    async def broker_restart(self, down_s: float = 1.0) -> None:
        """Restart the broker, down for down_s: every device loses its link
        and reconnects with its own backoff."""
        if self.broker is None:
            raise RuntimeError("this fleet's broker cannot be restarted from here (it was given by URL)")
        await asyncio.to_thread(self.broker.restart, down_s)

    # ---- housekeeping ------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel(self) -> None:
        """Stop every fault that runs by itself (random power cuts)."""
        for t in list(self._tasks):
            t.cancel()
