"""A shirt on Bluetooth LE, end to end, without a radio: the simulator's
virtual shirt (simulator/device.py) runs the firmware's runtime and its own
BLE link (firmware/pb/net/ble_link.py) on a GATT peripheral registered with
BlueZ over D-Bus (simulator/ble_radio.py), and the gateway's bridge on bleak
(gateway/ble_line.py) finds it through bluezoo. The gateway lists it with
its carrier, stores its telemetry, sends it a command, and updates its
features over BLE to a committed release. The gateway here is the real one
on a real store; its broker is never reached (nothing goes through one)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import time
from pathlib import Path

import pytest

from firmware.pb.net.proof import link_key
from gateway.ble_line import BleBridge
from gateway.broker import BrokerUrl
from gateway.paths import firmware_dir
from gateway.registry import Registry
from gateway.service import Gateway
from gateway.store import Store
from ota.keys import keygen
from ota.release import build
from simulator.clock import SimClock
from simulator.device import VirtualDevice

from ..support.bluez import BluezStack
from ..support.wait import async_wait_for

pytestmark = [pytest.mark.ble, pytest.mark.timeout(180)]

HASH = "$7$101$" + "A" * 16 + "$" + "B" * 86 + "=="
NOWHERE = BrokerUrl("127.0.0.1", 1)  # (a broker nobody reaches: the shirt is on BLE)


async def test_a_shirt_on_ble_is_listed_reports_answers_and_takes_an_update(
    bluez: BluezStack, tmp_path: Path
) -> None:
    keys = keygen(tmp_path / "keys")
    dev, password = "sh-ble-1", "the shirt's own"
    store = Store(tmp_path / "gw.db")
    Registry(store).register(dev, "shirt", "shirt-v1", HASH, time.time(), link_key(dev, password).hex())
    gw = Gateway(NOWHERE, store, api=None, keys=keys)
    gw.carriers.append(BleBridge(gw, "hci0"))
    shirt = VirtualDevice(
        dev,
        "shirt",
        NOWHERE,
        tmp_path / "devices",
        SimClock(),
        1,
        password=password,
        root=keys.root_bytes,
        trial_s=1,
        telemetry_s=1,
        sample_s=0.2,
        ble_adapter="hci1",
    )
    tasks = [asyncio.create_task(gw.run(), name="gateway"), asyncio.create_task(shirt.run(), name="shirt")]
    try:
        d = await async_wait_for(
            lambda: (d := store.device(dev)) and d.online and d, 60, what="the shirt online"
        )
        assert d.carrier == f"ble:{bluez.addresses[1]}"
        assert dev in gw.lines
        # its telemetry, stored
        await async_wait_for(lambda: (gw.flush(), store.device(dev))[1].last_telemetry, 20, what="telemetry")
        # a command, answered over the air
        reply = await gw.send_command(dev, "ping", timeout=20)
        assert reply["ok"] is True
        # an update of its features: vent again, with 16 KiB of tables it lacks
        src = tmp_path / "src" / "vent"
        shutil.copytree(
            firmware_dir() / "features" / "vent", src, ignore=shutil.ignore_patterns("__pycache__")
        )
        (src / "tables").mkdir()
        (src / "tables" / "t0.bin").write_bytes(random.Random(3).randbytes(16 * 1024))
        release = build("shirt", [src], "2.0", tmp_path / "r2", 2, ("py",), keys)
        gw.ota.releases.add(release.path, time.time())
        u = await gw.ota.start(dev, "shirt@2")
        done = await async_wait_for(
            lambda: (r := gw.ota.table.get(u.id)) and r.state in ("committed", "failed", "rolled_back") and r,
            120,
            what="the update's end",
        )
        assert done.state == "committed", done
        assert done.bytes == done.total > 16 * 1024
        shown = await async_wait_for(
            lambda: (d := store.device(dev)) and (d.ota or {}).get("counter") == 2 and d,
            30,
            what="its new hello",
        )
        assert shown.carrier == f"ble:{bluez.addresses[1]}"
    finally:
        shirt.stop()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(t, 10)
        radio = shirt.hal.ble
        if radio is not None:
            await radio.stop()
        store.close()
