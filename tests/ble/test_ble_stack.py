"""The gateway's Bluetooth side (bleak, unmodified, BlueZ backend) and the
simulated device's (simulator/ble_peripheral.py) talk through bluezoo on a
private system bus: scan for the service, connect, write with and without
response, receive a notification."""

from __future__ import annotations

import asyncio
import time

import pytest
from bleak import BleakClient

from simulator.ble_peripheral import BULK_UUID, CONTROL_UUID, NOTIFY_UUID, SERVICE_UUID, BlePeripheral

from ..support.bluez import BluezStack, adapters_on, scan_for

pytestmark = [pytest.mark.ble, pytest.mark.timeout(60)]


async def test_scan_connect_write_notify(bluez: BluezStack) -> None:
    controls: list[bytes] = []
    bulks: list[bytes] = []
    bulk_arrived = asyncio.Event()

    def on_bulk(data: bytes) -> None:
        bulks.append(data)
        bulk_arrived.set()

    async with BlePeripheral(adapter="hci1", on_control=controls.append, on_bulk=on_bulk) as device:
        # bluezoo answers a registration it failed with success (it only logs
        # the error): the adapter's UUIDs say whether the service is there
        adapters = await adapters_on(bluez.address)
        assert SERVICE_UUID in adapters["/org/bluez/hci1"]["UUIDs"]

        began = time.monotonic()
        found = await scan_for(SERVICE_UUID, adapter="hci0", timeout=15)
        scanned = time.monotonic() - began
        assert found.address == bluez.addresses[1]

        notified: asyncio.Queue[bytes] = asyncio.Queue()
        began = time.monotonic()
        async with BleakClient(found, timeout=15, bluez={"adapter": "hci0"}) as client:
            connected = time.monotonic() - began
            service = client.services.get_service(SERVICE_UUID)
            assert service is not None
            assert {c.uuid: c.properties for c in service.characteristics} == {
                CONTROL_UUID: ["write"],
                BULK_UUID: ["write-without-response"],
                NOTIFY_UUID: ["notify"],
            }

            # a write with response returns once the device has it
            await client.write_gatt_char(CONTROL_UUID, b"\x01hello", response=True)
            assert controls == [b"\x01hello"]

            # a write without response: the device has it a little later
            bulk = bytes(range(256)) * 2  # longer than any real ATT MTU: bluezoo has none
            await client.write_gatt_char(BULK_UUID, bulk, response=False)
            await asyncio.wait_for(bulk_arrived.wait(), 5)
            assert bulks == [bulk]

            await client.start_notify(NOTIFY_UUID, lambda _char, data: notified.put_nowait(bytes(data)))
            await device.wait_subscribed()
            assert device.subscribed
            await device.notify(b"\x02world")
            assert await asyncio.wait_for(notified.get(), 5) == b"\x02world"
            await device.notify(b"\x03again")
            assert await asyncio.wait_for(notified.get(), 5) == b"\x03again"

    print(f"stack started in {bluez.started_in:.3f}s, scan {scanned:.3f}s, connect {connected:.3f}s")
