"""A shirt on Bluetooth LE, end to end, without a radio: the simulator's
virtual shirt (simulator/device.py) runs the firmware's runtime and its own
BLE link (firmware/pb/net/ble_link.py) on a GATT peripheral registered with
BlueZ over D-Bus (simulator/ble_radio.py), and the gateway's bridge on bleak
(gateway/ble_line.py) finds it through bluezoo. The gateway lists it with
its carrier, stores its telemetry, sends it a command, and updates its
features over BLE to a committed release; a link lost mid-update (the shirt
out of range: what was in flight lost, both ends see it go) is made again,
proven again, and the download goes on from what the shirt had staged. The
gateway here is the real one on a real store; its broker is never reached
(nothing goes through one)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from firmware.pb.net.proof import link_key
from gateway.ble_line import BleBridge
from gateway.broker import BrokerUrl
from gateway.paths import firmware_dir
from gateway.registry import Registry
from gateway.service import Gateway
from gateway.store import Store
from gateway.updates import Update
from ota.keys import keygen
from ota.release import Release, build
from simulator.ble_radio import SimRadio
from simulator.clock import SimClock
from simulator.device import VirtualDevice

from ..support.bluez import BluezStack
from ..support.wait import async_wait_for

pytestmark = [pytest.mark.ble, pytest.mark.timeout(180)]

HASH = "$7$101$" + "A" * 16 + "$" + "B" * 86 + "=="
NOWHERE = BrokerUrl("127.0.0.1", 1)  # (a broker nobody reaches: the shirt is on BLE)


class OnBle:
    """A shirt on BLE (hci1) and the gateway's bridge (hci0), running: the
    gateway on a real store, its broker never reached."""

    def __init__(self, bluez: BluezStack, tmp_path: Path, dev: str) -> None:
        self.bluez = bluez
        self.tmp = tmp_path
        self.dev = dev
        self.keys = keygen(tmp_path / "keys")
        password = "the shirt's own"
        self.store = Store(tmp_path / "gw.db")
        key = link_key(dev, password).hex()
        Registry(self.store).register(dev, "shirt", "shirt-v1", HASH, time.time(), key)
        self.gw = Gateway(NOWHERE, self.store, api=None, keys=self.keys)
        self.gw.carriers.append(BleBridge(self.gw, "hci0"))
        self.shirt = VirtualDevice(
            dev,
            "shirt",
            NOWHERE,
            tmp_path / "devices",
            SimClock(),
            1,
            password=password,
            root=self.keys.root_bytes,
            trial_s=1,
            telemetry_s=1,
            sample_s=0.2,
            ble_adapter="hci1",
        )
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> OnBle:
        self.tasks = [
            asyncio.create_task(self.gw.run(), name="gateway"),
            asyncio.create_task(self.shirt.run(), name="shirt"),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.shirt.stop()
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(t, 10)
        radio = self.shirt.hal.ble
        if radio is not None:
            await radio.stop()
        self.store.close()

    @property
    def carrier(self) -> str:
        return f"ble:{self.bluez.addresses[1]}"

    async def online(self) -> None:
        d = await async_wait_for(
            lambda: (d := self.store.device(self.dev)) and d.online and d, 60, what="the shirt online"
        )
        assert d.carrier == self.carrier
        assert self.dev in self.gw.lines

    def release(self, tables: int) -> Release:
        """Release 2 of the shirt: vent again, with `tables` bytes of tables it lacks."""
        src = self.tmp / "src" / "vent"
        shutil.copytree(
            firmware_dir() / "features" / "vent", src, ignore=shutil.ignore_patterns("__pycache__")
        )
        (src / "tables").mkdir()
        (src / "tables" / "t0.bin").write_bytes(random.Random(3).randbytes(tables))
        release = build("shirt", [src], "2.0", self.tmp / "r2", 2, ("py",), self.keys)
        self.gw.ota.releases.add(release.path, time.time())
        return release

    async def ended(self, uid: str) -> Update:
        done: Update = await async_wait_for(
            lambda: (
                (r := self.gw.ota.table.get(uid)) and r.state in ("committed", "failed", "rolled_back") and r
            ),
            120,
            what="the update's end",
        )
        assert done.state == "committed", done
        shown = await async_wait_for(
            lambda: (d := self.store.device(self.dev)) and (d.ota or {}).get("counter") == 2 and d,
            30,
            what="its new hello",
        )
        assert shown.carrier == self.carrier
        return done


async def test_a_shirt_on_ble_is_listed_reports_answers_and_takes_an_update(
    bluez: BluezStack, tmp_path: Path
) -> None:
    async with OnBle(bluez, tmp_path, "sh-ble-1") as on:
        await on.online()
        gw, store, dev = on.gw, on.store, on.dev
        # its telemetry, stored
        await async_wait_for(lambda: (gw.flush(), store.device(dev))[1].last_telemetry, 20, what="telemetry")
        # a command, answered over the air
        reply = await gw.send_command(dev, "ping", timeout=20)
        assert reply["ok"] is True
        # an update of its features: vent again, with 16 KiB of tables it lacks
        on.release(16 * 1024)
        u = await gw.ota.start(dev, "shirt@2")
        done = await on.ended(u.id)
        assert done.bytes == done.total > 16 * 1024


async def test_a_link_lost_mid_update_is_made_again_and_the_update_goes_on_from_where_it_was(
    bluez: BluezStack, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "permabeta")
    async with OnBle(bluez, tmp_path, "sh-ble-2") as on:
        await on.online()
        gw, dev = on.gw, on.dev
        on.release(96 * 1024)
        # out of range once 40 KiB of it came through: what the gateway writes
        # after that is lost, and both ends see the link go
        radio = on.shirt.hal.ble
        assert radio is not None
        at_drop: list[int] = []

        async def drop() -> None:
            at_drop.append(gw.ota.get(u.id).served)
            await on.bluez.drop("hci0", on.bluez.addresses[1])

        came = out_of_range(radio, 40 * 1024, drop)
        u = await gw.ota.start(dev, "shirt@2")
        gone = f"ble:{on.bluez.addresses[1]}: the device went away; connecting again"
        await async_wait_for(lambda: gone in caplog.text, 30, what="the link lost")
        # the bridge connects again, the shirt proves itself again, the download goes on
        done = await on.ended(u.id)
        assert done.bytes == done.total > 96 * 1024
        # what it had staged was not sent again: at most what was in flight when the link went
        # (a chunk cut short is asked for again whole)
        again = done.served - done.total
        in_flight = at_drop[0] - came[1]
        assert 0 <= again <= in_flight + 2 * 4096 and again < came[1], (again, in_flight, came, done)
        # each connection proven: the first, the one made again, the one after the restart into 2
        assert caplog.text.count(f"{dev} proved itself") == 3


def out_of_range(radio: SimRadio, after: int, drop: Callable[[], Awaitable[None]]) -> list[int]:
    """Once `after` bytes were written to radio (once), it is out of range:
    later writes are lost until the gateway subscribes again, and drop()
    ends the connection. Returns [bytes that came in all, and then those
    that came before it went out of range]."""
    came = [0]
    lost = [False]
    dropped = [False]
    written, subscribed = radio._written, radio._subscribed

    def write(which: int, value: bytes) -> None:
        if lost[0]:
            return
        came[0] += len(value)
        written(which, value)
        if came[0] >= after and not dropped[0]:
            lost[0] = dropped[0] = True
            came.append(came[0])
            asyncio.get_running_loop().create_task(drop())

    def subscribe(on: bool) -> None:
        if on:
            lost[0] = False
        subscribed(on)

    radio._written = write  # type: ignore[method-assign]
    assert radio.peripheral is not None
    radio.peripheral.on_subscribed(subscribe)
    return came
