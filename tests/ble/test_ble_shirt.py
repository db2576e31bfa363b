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
from simulator.ble_peripheral import BlePeripheral
from simulator.ble_radio import SimRadio
from simulator.clock import SimClock
from simulator.device import VirtualDevice

from ..support.bluez import ADDRESSES, BluezStack
from ..support.wait import async_wait_for

pytestmark = [pytest.mark.ble, pytest.mark.timeout(180)]

HASH = "$7$101$" + "A" * 16 + "$" + "B" * 86 + "=="
NOWHERE = BrokerUrl("127.0.0.1", 1)  # (a broker nobody reaches: the shirt is on BLE)


class OnBle:
    """Shirts on BLE (one on each adapter given: hci1, hci2...) and the
    gateway's bridge on hci0, running: the gateway on a real store, its
    broker never reached."""

    def __init__(self, bluez: BluezStack, tmp_path: Path, devs: dict[str, str]) -> None:
        self.bluez = bluez
        self.tmp = tmp_path
        self.keys = keygen(tmp_path / "keys")
        self.store = Store(tmp_path / "gw.db")
        self.gw = Gateway(NOWHERE, self.store, api=None, keys=self.keys)
        self.bridge = BleBridge(self.gw, "hci0")
        self.gw.carriers.append(self.bridge)
        self.shirts: dict[str, VirtualDevice] = {}
        self.carriers: dict[str, str] = {}
        for dev, adapter in devs.items():
            password = f"{dev}'s own"
            key = link_key(dev, password).hex()
            Registry(self.store).register(dev, "shirt", "shirt-v1", HASH, time.time(), key)
            self.shirts[dev] = VirtualDevice(
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
                ble_adapter=adapter,
            )
            self.carriers[dev] = f"ble:{bluez.addresses[bluez.adapters.index(adapter)]}"
        self.dev = next(iter(devs))
        self.shirt = self.shirts[self.dev]
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> OnBle:
        self.tasks = [asyncio.create_task(self.gw.run(), name="gateway")]
        self.tasks += [asyncio.create_task(s.run(), name=dev) for dev, s in self.shirts.items()]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for shirt in self.shirts.values():
            shirt.stop()
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(t, 10)
        for shirt in self.shirts.values():
            if shirt.hal.ble is not None:
                await shirt.hal.ble.stop()
        self.store.close()

    async def online(self) -> None:
        """Every shirt online, on its own connection, at once."""
        for dev in self.shirts:
            d = await async_wait_for(
                lambda dev=dev: (d := self.store.device(dev)) and d.online and d, 60, what=f"{dev} online"
            )
            assert d.carrier == self.carriers[dev]
        await async_wait_for(lambda: set(self.shirts) <= set(self.gw.lines), 30, what="every shirt on a line")

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

    async def ended(self, uid: str, dev: str | None = None) -> Update:
        dev = dev or self.dev
        done: Update = await async_wait_for(
            lambda: (
                (r := self.gw.ota.table.get(uid)) and r.state in ("committed", "failed", "rolled_back") and r
            ),
            120,
            what=f"the end of {dev}'s update",
        )
        assert done.state == "committed", done
        shown = await async_wait_for(
            lambda: (d := self.store.device(dev)) and (d.ota or {}).get("counter") == 2 and d,
            30,
            what=f"{dev}'s new hello",
        )
        assert shown.carrier == self.carriers[dev]
        return done


async def test_a_shirt_on_ble_is_listed_reports_answers_and_takes_an_update(
    bluez: BluezStack, tmp_path: Path
) -> None:
    async with OnBle(bluez, tmp_path, {"sh-ble-1": "hci1"}) as on:
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
    async with OnBle(bluez, tmp_path, {"sh-ble-2": "hci1"}) as on:
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


async def test_shirts_at_once_beside_a_peripheral_that_sends_garbage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Two shirts on connections of their own, served at once (telemetry,
    commands, an update each), while a third peripheral that advertises the
    service sends noise and is dropped."""
    caplog.set_level(logging.INFO, "permabeta")
    stack = BluezStack(tmp_path / "bluez", (*ADDRESSES, "00:00:5E:00:53:02", "00:00:5E:00:53:03")).start()
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", stack.address)
    noisy = BlePeripheral("hci3", on_control=lambda v: None, on_bulk=lambda v: None, mtu=185)
    try:
        async with OnBle(stack, tmp_path, {"sh-ble-a": "hci1", "sh-ble-b": "hci2"}) as on, noisy:
            gw = on.gw
            await on.online()
            # the noise: values in sequence that begin no frame, until it is dropped
            await noisy.wait_subscribed(30)
            rng = random.Random(5)
            for i in range(400):
                if not noisy.send(bytes([i & 0xFF]) + b"\x00" + rng.randbytes(180)):
                    break
                await asyncio.sleep(0.002)
            await async_wait_for(lambda: stack.addresses[3] in on.bridge.banned, 30, what="the noise dropped")
            assert f"ble:{stack.addresses[3]}: dropped: " in caplog.text
            # the shirts, served all the while, each on its own line
            for dev in on.shirts:
                reply = await gw.send_command(dev, "ping", timeout=20)
                assert reply["ok"] is True
                await async_wait_for(
                    lambda dev=dev: (gw.flush(), on.store.device(dev))[1].last_telemetry, 20, what="telemetry"
                )
            assert {gw.lines[dev].line.name for dev in on.shirts} == set(on.carriers.values())
            # an update of both, at once
            on.release(32 * 1024)
            started = [await gw.ota.start(dev, "shirt@2") for dev in on.shirts]
            for u, dev in zip(started, on.shirts, strict=True):
                done = await on.ended(u.id, dev)
                assert done.bytes == done.total > 32 * 1024
            assert gw.rejects.get("proof_refused", 0) == 0
    finally:
        stack.stop()
