"""An ESP32's Bluetooth LE link (firmware/pb/net/ble_link.py over
pb/net/ble_radio.py) with a stand-in for MicroPython's bluetooth module,
which runs on a board only: the service registered and advertised as
docs/protocol.md 16 says, the proof of identity with the gateway's own code
(gateway/link_proof.py), messages both ways in values of the connection's
size, a lost write told by its sequence number, a notification the stack has
no room for tried again, a disconnect ending the line and a new connection
starting a new one. The same link on a real BlueZ peripheral, against the
gateway's bleak bridge, is tests/ble's."""

from __future__ import annotations

import asyncio
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest

from firmware.pb.net import ble_radio
from firmware.pb.net.ble_frag import Joiner, Sender
from firmware.pb.net.ble_link import BleLink
from firmware.pb.net.frames import encode
from firmware.pb.net.proof import link_key
from gateway.link_proof import ProofRefused

KEY = link_key("sh-1", "pw")


class StandInBLE:
    """bluetooth.BLE as the board's firmware has it, for one central: what
    the link registers and advertises, the values it notifies (into the
    gateway's joiner), and events fired at it."""

    def __init__(self) -> None:
        self.irq_handler: Any = None
        self.services: Any = None
        self.buffers: dict[int, int] = {}
        self.adverts: list[tuple[int, bytes, bytes, bool]] = []
        self.config_: dict[str, Any] = {}
        self.values: dict[int, bytes] = {}
        self.notified: list[bytes] = []
        self.room = 1_000_000  # notifications the stack takes before it is full
        self.disconnected: list[int] = []

    def active(self, on: bool) -> None:
        assert on

    def config(self, **kw: Any) -> None:
        self.config_.update(kw)

    def gatts_register_services(self, services: Any) -> Any:
        self.services = services
        return ((10, 11, 12),)

    def gatts_set_buffer(self, handle: int, size: int, append: bool = False) -> None:
        self.buffers[handle] = size

    def irq(self, handler: Any) -> None:
        self.irq_handler = handler

    def gap_advertise(self, interval_us: int, adv_data: bytes, resp_data: bytes, connectable: bool) -> None:
        self.adverts.append((interval_us, adv_data, resp_data, connectable))

    def gatts_read(self, handle: int) -> bytes:
        return self.values[handle]

    def gatts_notify(self, conn: int, handle: int, data: bytes) -> None:
        assert handle == 12
        if self.room <= 0:
            raise OSError(12)  # ENOMEM: the stack's buffers are full
        self.room -= 1
        self.notified.append(bytes(data))

    def gap_disconnect(self, conn: int) -> None:
        self.disconnected.append(conn)

    # the central's side
    def write(self, handle: int, value: bytes) -> None:
        self.values[handle] = value
        self.irq_handler(3, (1, handle))


class UUID:
    def __init__(self, text: str) -> None:
        self.text = text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UUID) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


@pytest.fixture
def ble(monkeypatch: pytest.MonkeyPatch) -> Iterator[StandInBLE]:
    stand_in = StandInBLE()
    module = types.ModuleType("bluetooth")
    module.BLE = lambda: stand_in  # type: ignore[attr-defined]
    module.UUID = UUID  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bluetooth", module)
    yield stand_in


class Gateway:
    """The gateway's end of the connection, with its own code: the proof
    (gateway/link_proof.py) and the values (ble_frag)."""

    def __init__(self, ble: StandInBLE, size: int = 20) -> None:
        from gateway.link_proof import LineProof

        self.ble = ble
        self.proof = LineProof(self.key_of)
        self.rx = Joiner()
        self.control = Sender(size)
        self.bulk = Sender(size)
        self.got: list[tuple[str, bytes]] = []
        self.seen = 0

    @staticmethod
    def key_of(dev: str) -> bytes:
        if dev != "sh-1":
            raise ProofRefused("unknown_device", dev)
        return KEY

    def take(self) -> None:
        """What the device notified since the last look: proofs answered."""
        for v in self.ble.notified[self.seen :]:
            for kind, payload in self.rx.feed(v):
                if kind == "auth":
                    answer, _ = self.proof.on_auth(payload)
                    if answer is not None:
                        self.send("auth", answer)
                else:
                    self.got.append((kind, payload))
        self.seen = len(self.ble.notified)

    def send(self, kind: str, payload: bytes, bulk: bool = False) -> None:
        for v in (self.bulk if bulk else self.control).values(encode(kind, payload)):
            self.ble.write(11 if bulk else 10, bytes(v))


async def settle(gw: Gateway, until: Any, steps: int = 200) -> None:
    for _ in range(steps):
        gw.take()
        if until():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not settled")


def test_the_service_is_registered_and_advertised_as_the_protocol_says(ble: StandInBLE) -> None:
    radio = ble_radio.Radio("sh-1")
    asyncio.run(radio.start(types.SimpleNamespace()))
    ((service, chars),) = ble.services
    assert service == UUID(ble_radio.SERVICE_UUID)
    assert chars == (
        (UUID(ble_radio.CONTROL_UUID), 0x0008),  # write
        (UUID(ble_radio.BULK_UUID), 0x0004),  # write without response
        (UUID(ble_radio.NOTIFY_UUID), 0x0010),  # notify
    )
    assert ble.buffers == {10: 512, 11: 512} and ble.config_ == {"gap_name": "sh-1", "mtu": 517}
    _, adv, resp, connectable = ble.adverts[0]
    assert connectable and adv[:3] == b"\x02\x01\x06" and adv[3:5] == b"\x11\x07"
    assert adv[5:] == bytes.fromhex(ble_radio.SERVICE_UUID.replace("-", ""))[::-1]
    assert resp == b"\x05\x09sh-1"


async def test_a_link_proves_itself_and_carries_messages_both_ways(ble: StandInBLE) -> None:
    radio = ble_radio.Radio("sh-1")
    link = BleLink("sh-1", radio, KEY)
    link.subscribe("pb/sh-1/cmd")
    link.subscribe("pb/sh-1/ota/#")
    came: list[tuple[str, bytes]] = []
    link.on_message = lambda topic, payload, retain: came.append((topic, bytes(payload)))
    link.birth = lambda: [("pb/sh-1/hello", b'{"v": 1}', 1, True)]
    run = asyncio.create_task(link.run())
    gw = Gateway(ble)
    await asyncio.sleep(0.05)
    assert not link.up
    ble.irq_handler(1, (1, 0, b"\x00" * 6))  # the gateway connects
    ble.irq_handler(21, (1, 185))  # and the MTU is exchanged
    await settle(gw, lambda: link.up and gw.got)
    assert gw.proof.proven == "sh-1" and gw.got == [("hello", b'{"v": 1}')]
    assert max(len(v) for v in ble.notified) <= 182  # (values of ATT_MTU - 3 once exchanged)
    # a 4 KB chunk on bulk, in values of the gateway's size
    chunk = bytes(range(256)) * 16
    gw.send("ota/chunk", chunk, bulk=True)
    gw.send("cmd", b'{"v": 1, "id": "c1", "op": "ping"}')
    await settle(gw, lambda: len(came) == 2)
    assert came == [("pb/sh-1/ota/chunk", chunk), ("pb/sh-1/cmd", b'{"v": 1, "id": "c1", "op": "ping"}')]
    # a big message out, with the stack full for a while: tried again, none lost
    ble.room = 0
    assert link.publish("pb/sh-1/telemetry", b"x" * 1000)

    async def room_later() -> None:
        await asyncio.sleep(0.1)
        ble.room = 1_000_000

    later = asyncio.create_task(room_later())
    await settle(gw, lambda: len(gw.got) == 2)
    assert gw.got[1] == ("telemetry", b"x" * 1000)
    await later
    # a write lost on bulk (a board's capture queue under flood): that frame is dropped, not taken wrong
    values = list(gw.bulk.values(encode("ota/chunk", chunk)))
    for v in values[:3] + values[4:]:
        ble.write(11, bytes(v))
    gw.send("ota/chunk", b"next", bulk=True)
    await settle(gw, lambda: len(came) == 3)
    assert came[2] == ("pb/sh-1/ota/chunk", b"next") and link.stats["bad"] >= 1
    await link.close()
    await asyncio.wait_for(run, 5)


async def test_a_disconnect_ends_the_line_and_the_next_connection_proves_again(ble: StandInBLE) -> None:
    link = BleLink("sh-1", ble_radio.Radio("sh-1"), KEY, queue_size=8)
    downs: list[str] = []
    link.on_down = downs.append
    link.backoff_min_ms = link.backoff_max_ms = 10
    run = asyncio.create_task(link.run())
    gw = Gateway(ble)
    await asyncio.sleep(0.05)
    ble.irq_handler(1, (1, 0, b"\x00" * 6))
    await settle(gw, lambda: link.up)
    ble.irq_handler(2, (1, 0, b"\x00" * 6))  # the gateway went out of range
    await settle(gw, lambda: not link.up)
    assert downs == ["EOFError: the gateway disconnected"] and len(ble.adverts) == 2  # advertising again
    link.publish("pb/sh-1/event", b'{"n": 1}', 1)  # kept for the next connection
    gw = Gateway(ble)  # a new connection counts from 0 and proves again
    gw.seen = len(ble.notified)
    ble.irq_handler(1, (1, 0, b"\x00" * 6))
    await settle(gw, lambda: link.up and gw.got)
    assert gw.got == [("event", b'{"n": 1}')] and link.stats["connects"] == 2
    await link.close()
    await asyncio.wait_for(run, 5)


async def test_a_central_without_the_key_gets_no_line(ble: StandInBLE) -> None:
    link = BleLink("sh-1", ble_radio.Radio("sh-1"), KEY)
    link.backoff_min_ms = link.backoff_max_ms = 10
    run = asyncio.create_task(link.run())
    gw = Gateway(ble)
    gw.key_of = lambda dev: link_key("sh-1", "a guess")  # type: ignore[method-assign]
    gw.proof = type(gw.proof)(gw.key_of)
    await asyncio.sleep(0.05)
    ble.irq_handler(1, (1, 0, b"\x00" * 6))
    for _ in range(50):
        gw.take()
        await asyncio.sleep(0.01)
    assert not link.up and link.last_error == "OSError: the gateway did not prove it holds the device's key"
    await link.close()
    await asyncio.wait_for(run, 5)
