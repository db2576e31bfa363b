"""The Bluetooth LE carrier's values (firmware/pb/net/ble_frag.py, docs/protocol.md
16) over a real ATT bearer at each MTU: two bumble devices on an in-process
link, the board's a GATT server with our service, the gateway's a client
that exchanges the MTU, writes frames cut to ATT_MTU - 3 and takes the
board's notifications. No radio, no D-Bus."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from bumble.att import ATT_DEFAULT_MTU, AttributeValue
from bumble.controller import Controller
from bumble.core import UUID
from bumble.device import Connection, Device, Peer
from bumble.gatt import Characteristic, Service
from bumble.gatt_client import CharacteristicProxy
from bumble.hci import Address
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport.common import AsyncPipeSink

from firmware.pb.net import ble_frag, frames
from simulator.ble_peripheral import BULK_UUID, CONTROL_UUID, NOTIFY_UUID, SERVICE_UUID

pytestmark = [pytest.mark.ble, pytest.mark.timeout(60)]

CHUNK = 4096 + 28  # the largest update chunk (docs/ota.md 3)
Message = tuple[str, bytes]


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


# gateway -> device: the messages that must not be lost to a flood go by control
TO_CONTROL: list[Message] = [
    ("cmd", _json({"v": 1, "id": "c-1", "op": "ping"})),
    ("ota/offer", _json({"v": 1, "id": "5f2a9c01b7e4", "size": 1937, "freshness": {"signed": "x" * 900}})),
    ("ota/offer", _json({"v": 1, "id": "5f2a9c01b7e4", "op": "cancel"})),
]
TO_BULK: list[Message] = [
    ("ota/chunk", bytes(range(256)) * 16 + bytes(28)),
    ("ota/time", _json({"signed": "x" * 300, "signatures": []})),
    ("ota/chunk", bytes(CHUNK)),
    ("ota/root", b"{}"),
]
FROM_DEVICE: list[Message] = [
    ("hello", _json({"v": 1, "dev": "th-01", "caps": ["x" * 40] * 20})),
    ("ota/req", _json({"v": 2, "dev": "th-01", "id": "5f2a9c01b7e4", "s": 1, "ack": 8192, "win": 4})),
    ("telemetry", _json({"v": 1, "ts": 1, "values": {f"t{i}": i / 3 for i in range(120)}})),
    ("ota/status", _json({"v": 1, "dev": "th-01", "id": "-", "state": "idle", "ts": 1})),
]


@dataclass
class Board:
    """The device's side: our service on a bumble GATT server, joining what
    is written to control and bulk, each with its own sequence."""

    device: Device
    control: Any = field(default_factory=ble_frag.Joiner)
    bulk: Any = field(default_factory=ble_frag.Joiner)
    got: dict[str, list[Message]] = field(default_factory=lambda: {"control": [], "bulk": []})
    written: dict[str, list[tuple[int, int]]] = field(default_factory=lambda: {"control": [], "bulk": []})
    notify: Characteristic[bytes] = field(init=False)

    def __post_init__(self) -> None:
        self.notify = Characteristic(NOTIFY_UUID, Characteristic.Properties.NOTIFY, "READABLE", b"")
        self.device.add_service(
            Service(
                SERVICE_UUID,
                [
                    self._writable(CONTROL_UUID, Characteristic.Properties.WRITE, "control"),
                    self._writable(BULK_UUID, Characteristic.Properties.WRITE_WITHOUT_RESPONSE, "bulk"),
                    self.notify,
                ],
            )
        )

    def _writable(self, uuid: str, props: Characteristic.Properties, name: str) -> Characteristic[bytes]:
        joiner = getattr(self, name)

        def on_write(connection: Connection, value: bytes) -> None:
            # a plain function: bumble runs each write in a task of its own,
            # and one that awaited could let a later value in first
            self.written[name].append((len(value), connection.att_mtu))
            self.got[name].extend(joiner.feed(value))

        return Characteristic(uuid, props, "WRITEABLE", AttributeValue(write=on_write))


def _device(link: LocalLink, address: str) -> Device:
    controller = Controller(address, link=link, public_address=address)
    return Device(address=Address(address), host=Host(controller, AsyncPipeSink(controller)))


@asynccontextmanager
async def connected() -> AsyncIterator[tuple[Board, Connection, Connection]]:
    """A board and a gateway on one link, connected: (board, the board's
    connection, the gateway's)."""
    link = LocalLink()  # type: ignore[no-untyped-call]
    board = Board(_device(link, "F0:F0:F0:F0:F0:F0"))
    gateway = _device(link, "F1:F1:F1:F1:F1:F1")
    await board.device.power_on()
    await gateway.power_on()
    incoming: asyncio.Future[Connection] = asyncio.get_running_loop().create_future()
    board.device.once(board.device.EVENT_CONNECTION, incoming.set_result)
    await board.device.start_advertising(advertising_interval_min=1.0)
    to_board = await gateway.connect(board.device.random_address)
    at_board = await asyncio.wait_for(incoming, 5)
    try:
        yield board, at_board, to_board
    finally:
        await to_board.disconnect()


async def _characteristics(peer: Peer) -> dict[str, CharacteristicProxy[bytes]]:
    await peer.discover_services()
    await peer.discover_characteristics()
    service = peer.get_services_by_uuid(UUID(SERVICE_UUID))
    assert service
    chars = {str(c.uuid).lower(): c for c in service[0].characteristics}
    return {"control": chars[CONTROL_UUID], "bulk": chars[BULK_UUID], "notify": chars[NOTIFY_UUID]}


@pytest.mark.parametrize("mtu", [23, 185, 517])
async def test_frames_cross_in_values_of_the_exchanged_mtu(mtu: int) -> None:
    async with connected() as (board, at_board, to_board):
        peer = Peer(to_board)
        assert to_board.att_mtu == at_board.att_mtu == ATT_DEFAULT_MTU
        # only the client asks (ATT Exchange MTU); the server answers with its
        # most (517) and both take the smaller
        assert await peer.request_mtu(mtu) == mtu
        assert to_board.att_mtu == at_board.att_mtu == mtu
        size = mtu - 3
        chars = await _characteristics(peer)

        notified: list[bytes] = []
        joiner = ble_frag.Joiner()
        from_device: list[Message] = []

        def on_notify(value: bytes) -> None:
            notified.append(bytes(value))
            from_device.extend(joiner.feed(value))

        await peer.subscribe(chars["notify"], on_notify)

        # the gateway: control with response, bulk without, each its own sequence
        senders = {"control": ble_frag.Sender(size), "bulk": ble_frag.Sender(size)}
        for name, msgs, response in (("control", TO_CONTROL, True), ("bulk", TO_BULK, False)):
            for msg in msgs:
                for value in senders[name].values(frames.encode(*msg)):
                    await peer.write_value(chars[name], bytes(value), with_response=response)
        await _until(lambda: board.got["bulk"] == TO_BULK)
        assert board.got["control"] == TO_CONTROL

        # the board: notifications in values of its own side's size
        sender = ble_frag.Sender(at_board.att_mtu - 3)
        sent: list[bytes] = []
        for msg in FROM_DEVICE:
            for value in sender.values(frames.encode(*msg)):
                sent.append(bytes(value))
                await board.device.notify_subscriber(at_board, board.notify, bytes(value))
        await _until(lambda: len(notified) == len(sent))
        assert from_device == FROM_DEVICE

    # every message once and whole, and no value longer than the MTU allows
    # (bumble would have cut a notification short, and takes a longer write)
    assert notified == sent
    limit = min(size, 512)
    for name in ("control", "bulk"):
        assert board.written[name], name
        assert max(n for n, _ in board.written[name]) == limit
        assert all(at == mtu for _, at in board.written[name])
    assert max(len(v) for v in sent) == limit
    for j in (board.control, board.bulk, joiner):
        assert (j.gaps, j.dups, j.bad, j.decoder.skipped, j.decoder.dropped) == (0, 0, 0, 0, 0)


async def test_bumble_cuts_a_notification_longer_than_the_mtu_allows() -> None:
    # what a value over ATT_MTU - 3 meets: a notification is cut short (the
    # frame's CRC then drops the frame); a write without response of up to
    # 512 bytes goes through whole whatever the MTU, so the limit is ours
    async with connected() as (board, at_board, to_board):
        peer = Peer(to_board)
        chars = await _characteristics(peer)
        notified: list[bytes] = []
        await peer.subscribe(chars["notify"], lambda v: notified.append(bytes(v)))
        await board.device.notify_subscriber(at_board, board.notify, bytes(range(40)))
        await _until(lambda: len(notified) == 1)
        assert notified == [bytes(range(20))]

        value = next(ble_frag.Sender(20).values(frames.encode("cmd", b"{}")))
        await peer.write_value(chars["bulk"], bytes(value) + bytes(40))
        await _until(lambda: bool(board.written["bulk"]))
        assert board.written["bulk"] == [(len(value) + 40, 23)]


async def _until(done: Any, timeout: float = 10.0) -> None:
    """Wait for the link to carry what is under way."""
    async with asyncio.timeout(timeout):
        while not done():
            await asyncio.sleep(0.01)
