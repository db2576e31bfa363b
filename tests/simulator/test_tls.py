"""A virtual device on mqtts:// (the firmware's client under CPython, given
the broker's CA as a board is) and a gateway trusting that CA, on a real
Mosquitto's TLS listener."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.broker import TlsListener, free_port
from gateway.ca import create_ca, server_cert
from gateway.service import Gateway
from gateway.store import Store
from gateway.tls import client_context
from simulator.clock import SimClock
from simulator.device import VirtualDevice

from ..support.mosquitto import Mosquitto
from ..support.wait import async_wait_for


@pytest.fixture(scope="module")
def tls_mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mosquitto, Path]]:
    """A Mosquitto with a TLS listener, and the CA folder that signed its certificate."""
    folder = tmp_path_factory.mktemp("sim-tls")
    ca = create_ca(folder / "ca")
    cert, key = server_cert(folder / "ca")
    broker = Mosquitto(folder / "mosquitto", tls=TlsListener(free_port(), ca.cert, cert, key))
    broker.start()
    yield broker, folder / "ca"
    broker.stop()


async def test_a_virtual_device_on_mqtts_reaches_a_gateway_on_mqtts(
    tmp_path: Path, tls_mosquitto: tuple[Mosquitto, Path]
) -> None:
    broker, ca = tls_mosquitto
    store = Store(tmp_path / "gw.db")
    url = broker.tls_url.with_credentials(*broker.operator())
    gw = Gateway(
        url, store, client_id="gw-sim-tls", api=None, tls_context=client_context(cafile=ca / "ca.pem")
    )
    gw_task = asyncio.create_task(gw.run(), name="test-gateway")
    dev_id, password = f"vt-{secrets.token_hex(3)}", secrets.token_urlsafe(12)
    broker.add_user(dev_id, password)
    der = (ca / "ca.der").read_bytes()
    dev = VirtualDevice(
        dev_id, "thermostat", broker.tls_url, tmp_path / "devices", SimClock(), 1, password=password, ca=der
    )
    dev_task = asyncio.create_task(dev.run(), name=f"sim-{dev_id}")
    try:
        await async_wait_for(lambda: gw.is_online(dev_id), 15, what=f"{dev_id} online over TLS")
        assert (dev.base / "ca.der").read_bytes() == der
        assert dev.device is not None and dev.device.client.ssl is not None
    finally:
        dev.stop()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(dev_task, 10)
        gw_task.cancel()
        await asyncio.gather(gw_task, return_exceptions=True)
        store.close()
