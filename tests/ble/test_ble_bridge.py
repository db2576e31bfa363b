"""The gateway's Bluetooth LE bridge (gateway/ble_line.py, docs/protocol.md
16, 17) through bluezoo: the real gateway on a real store (its broker never
reached) runs only the bridge, and a device made of the firmware's own
pieces (the proof, the values' sender and joiner, the frames) serves the
simulator's GATT peripheral on the other adapter. It is found, connected,
proves itself, is listed with its carrier, its telemetry is stored and it
answers a command; a device with the wrong key is refused and nothing it
says is taken; a peripheral that sends garbage is dropped while the gateway
goes on."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from firmware.pb.net.ble_frag import Joiner, Sender
from firmware.pb.net.frames import encode
from firmware.pb.net.proof import Prover, link_key, mac
from gateway.ble_line import BleBridge
from gateway.broker import BrokerUrl
from gateway.registry import Registry
from gateway.service import Gateway
from gateway.store import Store
from simulator.ble_peripheral import BlePeripheral

from ..support import messages
from ..support.bluez import BluezStack
from ..support.wait import async_wait_for

pytestmark = [pytest.mark.ble, pytest.mark.timeout(90)]

HASH = "$7$101$" + "A" * 16 + "$" + "B" * 86 + "=="
DEV = "th-1"


class Device:
    """A device's Bluetooth side: the simulator's peripheral on hci1, its
    values cut and joined by pb/net/ble_frag.py at the ATT MTU its
    characteristics say (bluezoo exchanges none: it hands the central that
    one), its proof pb/net/proof.py's. It keeps what the
    gateway wrote, with the characteristic it came by, and answers a
    command with a reply."""

    def __init__(self, dev: str, password: str, mtu: int = 23) -> None:
        self.dev = dev
        self.prover = Prover(dev, link_key(dev, password))
        self.outcome: str | bool | None = None
        self.nonce = ""  # of the proof under way
        self.longest = 0  # the longest value written to it
        self.got: list[tuple[str, str, bytes]] = []  # (characteristic, kind, payload)
        self.out = Sender(mtu - 3)
        self._joiners = {"control": Joiner(), "bulk": Joiner()}
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.peripheral = BlePeripheral(
            "hci1",
            on_control=lambda v: self._written("control", v),
            on_bulk=lambda v: self._written("bulk", v),
            mtu=mtu,
        )

    async def send(self, kind: str, payload: Any) -> None:
        if not isinstance(payload, (bytes, str)):
            payload = json.dumps(payload)
        await self.send_values([bytes(v) for v in self.out.values(encode(kind, payload))])

    async def send_values(self, values: list[bytes]) -> None:
        async with self._lock:  # (a frame's values are never interleaved with another's)
            for value in values:
                if not self.peripheral.send(value):
                    return  # the gateway has left (a dropped peripheral's noise goes nowhere)
                # a board's stack paces its notifications; the peripheral's D-Bus connection dies
                # of a burst (dbus-fast: EAGAIN, then a bad descriptor)
                await asyncio.sleep(0.002)

    async def prove(self) -> None:
        await self.peripheral.wait_subscribed(30)
        start = self.prover.start()
        self.nonce = json.loads(start)["n"]
        await self.send("auth", start)

    def _written(self, way: str, value: bytes) -> None:
        self.longest = max(self.longest, len(value))
        for kind, payload in self._joiners[way].feed(value):
            self.got.append((way, kind, bytes(payload)))
            if kind == "auth":
                reply, outcome = self.prover.on_auth(payload)
                self.outcome = outcome if outcome is not None else self.outcome
                if reply is not None:
                    self._later(self.send("auth", reply))
            elif kind == "cmd":
                cmd = json.loads(payload)
                result = {"uptime_s": 5, "heap_free": -1}
                self._later(
                    self.send(
                        "reply", {"v": 1, "dev": self.dev, "id": cmd["id"], "ok": True, "result": result}
                    )
                )

    def _later(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    with Store(tmp_path / "gw.db") as store:
        Registry(store).register(DEV, "thermostat", "thermostat-v1", HASH, 1.0, link_key(DEV, "pw").hex())
        yield Gateway(BrokerUrl("127.0.0.1", 1), store, api=None)


@pytest.fixture
async def bridge(bluez: BluezStack, gw: Gateway) -> AsyncIterator[BleBridge]:
    """The gateway's bridge on hci0, running; its broker is never reached."""
    bridge = BleBridge(gw, "hci0", proof_s=1.0)
    gw.carriers.append(bridge)
    task = asyncio.create_task(bridge.run(), name="bridge")
    yield bridge
    assert not task.done(), "the bridge stopped"
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def telemetry(seq: int) -> dict[str, Any]:
    return {
        "v": 1,
        "dev": DEV,
        "seq": seq,
        "ts": time.time(),
        "sensors": {"temperature": 21.5},
        "actuators": {"relay": False},
        "features": {},
    }


@pytest.mark.parametrize("mtu", [23, 517])
async def test_a_device_is_found_proves_itself_and_is_served(
    bluez: BluezStack, gw: Gateway, bridge: BleBridge, mtu: int
) -> None:
    device = Device(DEV, "pw", mtu)
    async with device.peripheral:
        await device.prove()
        await async_wait_for(lambda: device.outcome is True, 15, what="the gateway's ok")
        address = bluez.addresses[1]
        assert gw.lines[DEV].line.name == f"ble:{address}" and list(bridge.links) == [address]

        await device.send("hello", messages.hello(DEV))
        await device.send("state", {"v": 1, "dev": DEV, "state": "online", "ts": time.time()})
        await device.send("telemetry", telemetry(1))
        await async_wait_for(lambda: gw.is_online(DEV) and gw.counters["accepted"] >= 3, 10)
        gw.flush()
        d = gw.store.device(DEV)
        assert d is not None and d.carrier == f"ble:{address}"
        assert [row.seq for row in gw.store.telemetry(DEV)] == [1]

        reply = await gw.send_command(DEV, "ping", timeout=10)
        assert reply["ok"] is True and reply["result"]["uptime_s"] == 5
        await gw.publish(f"pb/{DEV}/ota/time", json.dumps({"v": 1, "signed": "x" * 1200}).encode(), 1, False)
        await async_wait_for(lambda: any(k == "ota/time" for _, k, _ in device.got), 10)
        # the proof's and the command's messages by control, the rest by bulk
        assert sorted({(way, kind) for way, kind, _ in device.got}) == [
            ("bulk", "ota/time"),
            ("control", "auth"),
            ("control", "cmd"),
        ]
        assert gw.rejects == {} and device.longest == min(mtu - 3, 512)  # values of ATT_MTU - 3


async def test_a_device_with_the_wrong_key_is_refused_and_nothing_it_says_is_taken(
    bluez: BluezStack, gw: Gateway, bridge: BleBridge, caplog: pytest.LogCaptureFixture
) -> None:
    device = Device(DEV, "not-its-password")
    async with device.peripheral:
        await device.prove()
        await async_wait_for(lambda: isinstance(device.outcome, str), 15, what="the gateway's challenge")
        assert "did not prove" in str(device.outcome)  # the gateway's MAC is under the key it was given
        # a device that answers anyway, with a MAC of its own key, and talks on
        challenge = json.loads(device.got[-1][2])
        own = link_key(DEV, "not-its-password")
        answer = {"v": 1, "mac": mac(own, f"pb1 device {challenge['n']} {device.nonce} {DEV}")}
        await device.send("auth", answer)
        await device.send("hello", messages.hello(DEV))
        await device.send("telemetry", telemetry(1))
        await async_wait_for(lambda: gw.rejects.get("unproven") and len(device.got) == 3, 10)
        # (and what it says unproven is answered: prove yourself first)
        assert [json.loads(p).get("error") for _, _, p in device.got] == [None, "bad_proof", "unproven"]
        gw.flush()
        assert gw.lines == {} and gw.store.device(DEV) is None and gw.store.telemetry_count(DEV) == 0
        assert gw.rejects == {"proof_refused": 1, "unproven": 1} and gw.counters["accepted"] == 0

        # one that goes on trying is let go at its fifth refusal
        for _ in range(4):
            await device.send("auth", {"v": 1, "mac": "0" * 64})
        address = bluez.addresses[1]
        await async_wait_for(lambda: address in bridge.banned, 10, what="the device dropped")
        assert f"ble:{address}: dropped: 5 proofs refused" in caplog.text
        assert bridge.links == {}


async def test_a_device_let_go_is_dialled_again_with_backoff(
    bluez: BluezStack, gw: Gateway, bridge: BleBridge, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "permabeta.gateway.ble")
    device = Device(DEV, "pw")
    async with device.peripheral:
        await device.prove()
        await async_wait_for(lambda: device.outcome is True, 15, what="the gateway's ok")
        # (each connection that follows stays up longer than this: only a device that
        # proved itself starts its backoff over, so theirs grows all the same)
        bridge.settled_s = 0.5
        Registry(gw.store).revoke(DEV, 2.0)
        gw.revoked(DEV, True)  # the gateway hangs up on it
        address = bluez.addresses[1]
        assert gw.lines == {}

        # it connects again, proves nothing, is hung up again: further apart each time
        def delays() -> list[float]:
            said = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"ble:{address}: ")]
            return [float(m.rsplit(" in ", 1)[1].split()[0]) for m in said if "; connecting again in " in m]

        await async_wait_for(lambda: len(delays()) >= 4, 30, what="four connections tried again")
        assert "hung up: th-1 is revoked; connecting again" in caplog.text
        assert "no proof of identity within 1 s; connecting again" in caplog.text
        for k, delay in enumerate(delays()[:4]):  # 0.5 s doubling, each jittered down to half
            assert 0.5 * 2**k / 2 <= delay <= 0.5 * 2**k
        assert gw.lines == {} and bridge.links == {} and gw.rejects == {}


def _noise(n: int) -> list[bytes]:
    """n values of random bytes in sequence that begin no frame."""
    return [bytes([i & 0xFF]) + b"\x00" + os.urandom(510) for i in range(n)]


def _oversized(n: int) -> list[bytes]:
    """n values out of sequence, each the start of a frame whose header says
    8000 bytes (at most 4400 may follow)."""
    head = b"\xfa\xce" + (8000).to_bytes(2, "big") + (8000 ^ 0xFFFF).to_bytes(2, "big")
    return [bytes([(7 * i + 3) & 0xFF]) + head + os.urandom(13) for i in range(n)]


@pytest.mark.parametrize(
    ("attack", "values", "reason"),
    [("noise", _noise(140), "bytes of garbage"), ("oversized frames", _oversized(60), "frames dropped")],
)
async def test_a_peripheral_that_sends_garbage_is_dropped_and_the_gateway_goes_on(
    bluez: BluezStack,
    gw: Gateway,
    bridge: BleBridge,
    caplog: pytest.LogCaptureFixture,
    attack: str,
    values: list[bytes],
    reason: str,
) -> None:
    caplog.set_level(logging.INFO, "permabeta.gateway")
    device = Device(DEV, "pw")
    async with device.peripheral:
        await device.peripheral.wait_subscribed(30)
        await device.send_values(values)
        address = bluez.addresses[1]
        await async_wait_for(lambda: address in bridge.banned, 15, what=f"the {attack} peripheral dropped")
        dropped = [r.getMessage() for r in caplog.records if ": dropped: " in r.getMessage()]
        assert (
            len(dropped) == 1 and dropped[0].startswith(f"ble:{address}: dropped: ") and reason in dropped[0]
        )
        assert bridge.links == {} and gw.lines == {} and gw.counters["accepted"] == 0
        # it is not dialled again while banned, though it still advertises
        await asyncio.sleep(2)
        assert bridge.links == {} and sum(": connected" in r.getMessage() for r in caplog.records) == 1
        # and the gateway serves what else it carries
        gw.handle(f"pb/{DEV}/hello", json.dumps(messages.hello(DEV)).encode(), True)
        d = gw.store.device(DEV)
        assert d is not None and d.carrier == "mqtt"
