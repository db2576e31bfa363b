"""Virtual devices (simulator/device.py) on the session's Mosquitto, with a
gateway holding update keys running in the test's own loop, and releases
built and signed with those keys."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.broker import BrokerUrl
from gateway.paths import firmware_dir
from gateway.releases import StoredRelease
from gateway.service import Gateway
from gateway.store import Store
from gateway.updates import Update
from ota.keys import Keys, keygen
from ota.release import build
from simulator.clock import SimClock
from simulator.device import VirtualDevice
from simulator.fleet import Fleet
from simulator.process import ProcessDevice

from ..conftest import unique_id
from ..support.mosquitto import Mosquitto
from ..support.wait import async_wait_for

FEATURES = firmware_dir() / "features"
TRIAL_S = 1.0

MakeDevice = Callable[..., Awaitable[VirtualDevice]]


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return keygen(tmp_path_factory.mktemp("sim-keys") / "k")


def copy_feature(name: str, into: Path) -> Path:
    """A shipped feature copied into a folder of its own, to change."""
    dst = into / name
    shutil.copytree(FEATURES / name, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dst


@pytest.fixture(scope="session")
def eco_release(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Path:
    """thermostat + eco, counter 2."""
    out = tmp_path_factory.mktemp("sim-r2") / "r"
    return build("thermostat", [FEATURES / "thermostat", FEATURES / "eco"], "2.0.0", out, 2, keys=keys).path


@pytest.fixture(scope="session")
def broken_eco_release(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Path:
    """thermostat + an eco whose start() raises, counter 3."""
    tmp = tmp_path_factory.mktemp("sim-r3")
    eco = copy_feature("eco", tmp / "src")
    init = eco / "__init__.py"
    init.write_text(
        init.read_text().replace(
            "def start(ctx):\n", "def start(ctx):\n    raise RuntimeError('eco 2.0 cannot start')\n"
        )
    )
    return build("thermostat", [FEATURES / "thermostat", eco], "3.0.0-broken", tmp / "r", 3, keys=keys).path


class Rig:
    """A gateway with keys in this loop, and what the test does with it."""

    def __init__(self, gw: Gateway, task: asyncio.Task[None]) -> None:
        self.gw = gw
        self.task = task

    def publish(self, release: Path) -> StoredRelease:
        import time

        stored, _ = self.gw.ota.releases.add(release, time.time())
        return stored

    async def update(self, dev: VirtualDevice, release: StoredRelease, timeout: float = 15) -> Update:
        """Offer release to dev and wait for the update to end."""
        await async_wait_for(lambda: self.gw.is_online(dev.id), 10, what=f"{dev.id} online")
        u = await self.gw.ota.start(dev.id, release.id)
        await async_wait_for(lambda: self.gw.ota.get(u.id).ended, timeout, what=f"update {u.id} ended")
        return self.gw.ota.get(u.id)


@pytest.fixture
async def rig(tmp_path: Path, mosquitto: Mosquitto, keys: Keys) -> AsyncIterator[Rig]:
    store = Store(tmp_path / "gw.db")
    gw = Gateway(
        mosquitto.gateway_url, store, client_id=f"gw-sim-{secrets.token_hex(4)}", api=None, keys=keys
    )
    task = asyncio.create_task(gw.run(), name="test-gateway")
    await async_wait_for(gw.connected.is_set, 10, what="gateway connected")
    yield Rig(gw, task)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    store.close()


@pytest.fixture
async def make_device(tmp_path: Path, mosquitto: Mosquitto, keys: Keys) -> AsyncIterator[MakeDevice]:
    """make_device(model="thermostat", dev_id=None, via=None, **VirtualDevice
    options): a virtual device with broker credentials, trusting `keys`,
    booted and running. via: the address it connects to instead of the
    broker's (a link in front of it)."""
    running: list[tuple[VirtualDevice, asyncio.Task[None]]] = []

    async def make(
        model: str = "thermostat", dev_id: str | None = None, via: BrokerUrl | None = None, **options: Any
    ) -> VirtualDevice:
        dev_id, password = dev_id or unique_id(model[:2]), secrets.token_urlsafe(12)
        mosquitto.add_user(dev_id, password)
        options.setdefault("root", keys.root_bytes)
        options.setdefault("trial_s", TRIAL_S)
        options.setdefault("telemetry_s", 1)
        options.setdefault("sample_s", 0.2)
        broker = via or mosquitto.url
        dev = VirtualDevice(
            dev_id, model, broker, tmp_path / "devices", SimClock(), 1, password=password, **options
        )
        task = asyncio.create_task(dev.run(), name=f"sim-{dev_id}")
        running.append((dev, task))
        await async_wait_for(lambda: dev.device is not None and dev.device.client.up, 10, what="device up")
        return dev

    yield make
    for dev, _ in running:
        dev.stop()
    for _, task in running:
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, 10)


def unix_port_board(broker: Mosquitto, workdir: Path, root: bytes) -> ProcessDevice:
    """A thermostat on the MicroPython unix port (128 KB heap), with broker
    credentials, trusting root; not yet running."""
    board_id, password = f"mp-{secrets.token_hex(3)}", secrets.token_urlsafe(9)
    broker.add_user(board_id, password)
    return ProcessDevice(
        board_id,
        "thermostat",
        broker.url,
        workdir / "boards",
        SimClock(),
        1,
        password=password,
        telemetry_s=1,
        root=root,
        trial_s=TRIAL_S,
    )


@dataclass
class FleetRig:
    fleet: Fleet
    gw: Gateway
    store: Store
    ids: list[str]  # every device, virtual and process
    prefix: dict[str, str]


@contextlib.asynccontextmanager
async def fleet_rig(
    broker: Mosquitto, workdir: Path, models: dict[str, int], **options: Any
) -> AsyncIterator[FleetRig]:
    """A fleet (ids unique on the broker, a password each) and a gateway
    without keys in this loop, both running; stopped after. options: Fleet's."""
    tag = secrets.token_hex(2)
    prefix = {m: f"{m[0]}{tag}" for m in models}
    passwords: dict[str, str] = {}
    fleet = Fleet(
        broker.url,
        workdir / "devices",
        models=models,
        prefix=prefix,
        passwords=lambda dev: passwords.setdefault(dev, secrets.token_urlsafe(9)),
        **options,
    )
    broker.add_users(passwords)
    store = Store(workdir / "gw.db")
    gw = Gateway(broker.gateway_url, store, client_id=f"gw-fleet-{tag}", api=None)
    gw_task = asyncio.create_task(gw.run(), name="test-gateway")
    fleet.start()
    try:
        yield FleetRig(fleet, gw, store, list(passwords), prefix)
    finally:
        await fleet.aclose(30)
        gw_task.cancel()
        await asyncio.gather(gw_task, return_exceptions=True)
        store.close()
