"""Keys and real releases (the shipped thermostat feature, built and signed)
in the test's own tmp_path, a gateway running in the test's own loop on the
session's Mosquitto, and devices played by OtaDevice with their own
broker credentials."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.clock import Clock
from gateway.paths import firmware_dir
from gateway.pool import Pool
from gateway.service import Gateway, cancel_until_done
from gateway.store import Store
from gateway.tls import ApiTls
from ota.keys import Keys, keygen
from ota.release import Release, build

from ..conftest import unique_id
from ..support.mosquitto import Mosquitto
from ..support.ota import OtaDevice
from ..support.wait import async_wait_for

MakeRelease = Callable[..., Release]


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return keygen(tmp_path / "keys")


@pytest.fixture
def make_release(tmp_path: Path, keys: Keys) -> MakeRelease:
    """make_release(counter, version=..., extra=...): the thermostat feature
    (plus, if given, a file of `extra` content, so blobs differ) built and
    signed by `keys` into a new folder."""

    def make(
        counter: int = 2, version: str | None = None, extra: str = "", signer: Keys | None = None
    ) -> Release:
        src = tmp_path / f"features-{counter}-{len(extra)}"
        if not src.exists():
            shutil.copytree(
                firmware_dir() / "features" / "thermostat",
                src / "thermostat",
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            )
            if extra:
                (src / "thermostat" / "notes.txt").write_text(extra)
        out = tmp_path / f"release-{counter}-{len(extra)}"
        return build(
            "thermostat",
            [src / "thermostat"],
            version or f"2026.11.{counter}",
            out,
            counter=counter,
            keys=signer or keys,
        )

    return make


@pytest.fixture
def release(make_release: MakeRelease) -> Release:
    return make_release(2)


# ---- a gateway in this process, on the session's Mosquitto -----------------------


@dataclass
class Running:
    gw: Gateway
    store: Store
    task: asyncio.Task[None]
    url: str
    token: str

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


StartGateway = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_gateway(
    gw_db: Path | str, mosquitto: Mosquitto, tmp_path: Path
) -> AsyncIterator[StartGateway]:
    """start_gateway(keys=None, deadline=900, db=gw_db, clock=None, api=..., api_tls=None,
    worker=None, machine=None): a Gateway running in this test's loop with its API on a free
    port (with worker, as that worker of a pool on db, with a broker account of its own; with
    machine, as if on a machine of that name, with a files folder of its own); stopped after
    the test."""
    running: list[Running] = []

    async def start(
        keys: Keys | None = None,
        deadline: float = 900.0,
        db: Path | str | None = None,
        clock: Clock | None = None,
        api: tuple[str, int] = ("127.0.0.1", 0),
        api_tls: ApiTls | None = None,
        worker: str | None = None,
        machine: str | None = None,
    ) -> Running:
        store = Store(db or gw_db, files=tmp_path / machine if machine else None)
        gw = Gateway(
            mosquitto.gateway_url,
            store,
            client_id=f"gw-test-{secrets.token_hex(4)}",
            api=api,
            api_tls=api_tls,
            keys=keys,
            update_deadline=deadline,
            clock=clock,
            pool=Pool(store, worker, host=machine) if worker else None,
        )
        task = asyncio.create_task(gw.run(), name="test-gateway")
        await async_wait_for(lambda: gw.connected.is_set() and gw.api_url, 10, what="gateway up")
        api = json.loads(store.get_meta("api") or "{}")
        r = Running(gw, store, task, gw.api_url, api["token"])
        running.append(r)
        return r

    yield start
    for r in running:
        await stop(r)


async def stop(r: Running) -> None:
    await cancelled(r.task)
    r.store.close()


async def cancelled(task: asyncio.Task[None]) -> None:
    """Cancel a gateway's task and wait for its end, as a signal does
    (cancel_until_done); what it raised other than a cancel is raised."""
    await cancel_until_done(task)
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.fixture
def ota_devices(mosquitto: Mosquitto) -> Iterator[Callable[..., OtaDevice]]:
    """ota_devices(prefix): a device id with broker credentials, played by OtaDevice."""
    made: list[OtaDevice] = []

    def make(prefix: str = "th") -> OtaDevice:
        dev_id, password = unique_id(prefix), secrets.token_urlsafe(12)
        mosquitto.add_user(dev_id, password)
        d = OtaDevice(mosquitto, dev_id, password)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()
