"""A three-node NATS cluster per test (tests/support/nats.py), its registry in
the gateway's database, gateways in the test's loop and virtual devices on
any node."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.pool import Pool
from gateway.service import Gateway
from gateway.store import Store
from ota.keys import Keys, keygen
from ota.release import build
from simulator.clock import SimClock
from simulator.device import VirtualDevice

from ..conftest import unique_id
from ..gateway.conftest import cancelled
from ..simulator.conftest import FEATURES, TRIAL_S
from ..support.nats import TestCluster
from ..support.wait import async_wait_for

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return keygen(tmp_path_factory.mktemp("cluster-keys") / "k")


@pytest.fixture(scope="session")
def eco_release(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Path:
    out = tmp_path_factory.mktemp("cluster-r2") / "r"
    return build("thermostat", [FEATURES / "thermostat", FEATURES / "eco"], "2.0.0", out, 2, keys=keys).path


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "gw.db") as s:
        yield s


@pytest.fixture
def cluster(tmp_path: Path, store: Store) -> Iterator[TestCluster]:
    c = TestCluster(tmp_path / "nats", store)
    try:
        c.start()
        yield c
    finally:
        c.stop()


@dataclass
class Worker:
    gw: Gateway
    task: asyncio.Task[None]
    store: Store

    async def stop(self) -> None:
        await cancelled(self.task)


StartGateway = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def start_gateway(tmp_path: Path, cluster: TestCluster, keys: Keys) -> AsyncIterator[StartGateway]:
    """start_gateway(node=0, worker=None): a gateway with keys on the cluster
    (its MQTT side on that node, its work queue from any), alone or as that
    worker of a pool on the test's database; stopped after the test."""
    running: list[Worker] = []

    async def start(node: int = 0, worker: str | None = None, **options: Any) -> Worker:
        store = Store(tmp_path / "gw.db")
        gw = Gateway(
            cluster.gateway_url(node, worker),
            store,
            client_id=f"pb-gateway-{worker}" if worker else "pb-gateway",
            api=None,
            keys=keys,
            pool=Pool(store, worker) if worker else None,
            cluster=cluster.nats_urls,
            **options,
        )
        task = asyncio.create_task(gw.run(), name=f"gateway-{worker}")
        w = Worker(gw, task, store)
        running.append(w)
        assert gw.cluster is not None
        await async_wait_for(
            lambda: gw.connected.is_set() and gw.cluster is not None and gw.cluster.ready.is_set(),
            30,
            what="gateway on the cluster",
        )
        return w

    yield start
    for w in running:
        await w.stop()
        w.store.close()


@dataclass
class Devices:
    cluster: TestCluster
    workdir: Path
    keys: Keys
    running: list[tuple[VirtualDevice, asyncio.Task[None]]] = field(default_factory=list)

    async def start(self, node: int, model: str = "thermostat", **options: Any) -> VirtualDevice:
        """A virtual device registered and let in, connected to that node's MQTT listener."""
        dev_id = unique_id(model[:2])
        password = self.cluster.register(dev_id, model)
        await asyncio.to_thread(self.cluster.let_in, dev_id, password)
        options.setdefault("root", self.keys.root_bytes)
        options.setdefault("trial_s", TRIAL_S)
        options.setdefault("telemetry_s", 1)
        options.setdefault("sample_s", 0.2)
        broker = self.cluster.mqtt_url(node)
        dev = VirtualDevice(dev_id, model, broker, self.workdir, SimClock(), 1, password=password, **options)
        task = asyncio.create_task(dev.run(), name=f"sim-{dev_id}")
        self.running.append((dev, task))
        await async_wait_for(lambda: dev.device is not None and dev.device.client.up, 20, what="device up")
        return dev


@pytest.fixture
async def devices(tmp_path: Path, cluster: TestCluster, keys: Keys) -> AsyncIterator[Devices]:
    d = Devices(cluster, tmp_path / "devices", keys)
    yield d
    for dev, _ in d.running:
        dev.stop()
    for _, task in d.running:
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, 10)
